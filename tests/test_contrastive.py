"""CLIP-style contrastive learning: InfoNCE against its formula and finite differences, zero-shot prediction."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse import contrastive as C

torch.set_num_threads(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_info_nce_matches_the_formula(seed):
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    rows = -sum(logits[i, i] - torch.logsumexp(logits[i], 0) for i in range(5)) / 5
    cols = -sum(logits[i, i] - torch.logsumexp(logits[:, i], 0) for i in range(5)) / 5
    torch.testing.assert_close(C.info_nce_loss(logits), (rows + cols) / 2)


def test_info_nce_known_answers():
    assert C.info_nce_loss(torch.zeros(8, 8)).item() == pytest.approx(math.log(8))  # no information: log B
    assert C.info_nce_loss(100 * torch.eye(4)).item() == pytest.approx(0.0, abs=1e-6)  # pairs found
    assert C.info_nce_loss(torch.zeros(1, 1)).item() == 0.0  # one pair: nothing to contrast


def test_info_nce_gradient_matches_finite_differences():
    logits = torch.randn(4, 4, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(4))
    assert torch.autograd.gradcheck(C.info_nce_loss, (logits,))


def test_logits_are_scaled_cosines_and_scale_is_capped():
    torch.manual_seed(0)
    vocab = C.build_vocab()
    model = C.CLIP(len(vocab)).eval()
    images = torch.rand(3, 1, 8, 8)
    ids = C.encode_captions(["a seven", "the digit two", "one"], vocab)
    with torch.no_grad():
        img, txt = model.image_encoder(images), model.text_encoder(ids)
        want = math.exp(model.logit_scale.item()) * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
        torch.testing.assert_close(model(images, ids), want, rtol=1e-5, atol=1e-5)
        model.logit_scale.fill_(10.0)
        scale = model(images, ids) / (model.encode_image(images) @ model.encode_text(ids).T)
    torch.testing.assert_close(scale, torch.full((3, 3), 100.0), rtol=1e-4, atol=1e-3)


def test_encode_captions_pads_and_rejects_unknown_words():
    vocab = C.build_vocab()
    ids = C.encode_captions(["seven", "the digit seven"], vocab)
    assert ids.shape == (2, 3) and ids[0, 1:].tolist() == [0, 0] and ids[0, 0] == ids[1, 2] == vocab["seven"]
    with pytest.raises(ValueError, match="eleven"):
        C.encode_captions(["eleven"], vocab)
    with pytest.raises(TypeError):
        C.encode_captions("seven", vocab)


def test_text_encoder_ignores_padding():
    torch.manual_seed(1)
    vocab = C.build_vocab()
    enc = C.TextEncoder(len(vocab))
    short = C.encode_captions(["a two"], vocab)
    padded = torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(enc(short), enc(padded))


def test_zero_shot_predict_picks_the_nearest_text():
    torch.manual_seed(2)
    vocab = C.build_vocab()
    model = C.CLIP(len(vocab)).eval()
    images = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        emb = model.encode_image(images)
    texts = F.normalize(emb[[3, 0, 5]] + 0.01 * torch.randn(3, emb.shape[1]), dim=-1)
    assert C.zero_shot_predict(model, images[[0, 3, 5]], texts).tolist() == [1, 0, 2]
    ens = C.class_text_embeddings(model, vocab, C.TRAIN_TEMPLATES[:2])
    torch.testing.assert_close(ens.norm(dim=-1), torch.ones(10))
    with pytest.raises(ValueError, match="template"):
        C.class_text_embeddings(model, vocab, ())


def test_info_nce_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        C.info_nce_loss(torch.zeros(3, 4))


def test_shipped_clip_classifies_held_out_digits_zero_shot():
    from llmcourse.datasets import load_digits

    model, vocab = C.load_clip()
    _, _, Xte, yte = load_digits(images=True)
    for templates in (C.TRAIN_TEMPLATES, C.HELDOUT_TEMPLATES):
        pred = C.zero_shot_predict(model, torch.as_tensor(Xte), C.class_text_embeddings(model, vocab, templates))
        assert (pred == torch.as_tensor(yte)).float().mean() > 0.9  # chance is 0.1
