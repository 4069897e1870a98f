"""Hidden checks for the chapter 9 exercise: the chat template, assistant-only labels, a small SFT run.

References, all computed live (:mod:`autograder.checks._ch09_references`):

* ``render_chat`` - ``apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`` of
  the course's ``transformers`` tokenizer, which holds ``llmcourse.chat.CHAT_TEMPLATE`` (Jinja), on
  conversations drawn from the course secret: with and without a system message, one to four
  turns, reasoning (``reasoning_content``), whitespace around the contents, a last user turn, the
  generation prompt on and off, text beyond ASCII;
* ``assistant_labels`` - ``llmcourse.chat.build_labels`` with the course tokenizer (the ids, and
  labels equal to them on each reply and its ``<|eos|>``, -100 elsewhere), on the same kinds of
  conversations; a probe calls the student's function in the sandbox with the tokenizer;
* ``sft`` - a probe fine-tunes the shipped base model with the student's function on instruction
  conversations generated from the course secret; the check then asks the model other generated
  instructions, whose answers never enter the sandbox, and scores the greedy replies by exact match.

When a result is wrong, the check tries the usual mistakes and names the one that reproduces it.

Taught in: book/09-sft
"""

from __future__ import annotations

import numpy as np
import torch

from autograder.checks import _ch09_references as ref
from autograder.compare import describe, fail, probe_result, to_array
from autograder.guard import call_student, run_probe
from autograder.secret import hidden_seed
from autograder.spec import Task

TEMPLATE_MODULES = ("transformers", "jinja2", "llmcourse.chat")
RENDER, LABELS, SFT = TASKS = (
    Task("ch09_render_chat", "render_chat(messages, add_generation_prompt=False)", 3, "the conversation as a `str`",
         "`apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` of the course's transformers "
         "tokenizer (its Jinja chat template)", modules=TEMPLATE_MODULES),
    Task("ch09_assistant_labels", "assistant_labels(messages, tokenizer)", 3,
         "`(input_ids, labels)`, two `(T,)` int64 tensors", "`llmcourse.chat.build_labels` (several turns, "
         "reasoning, a last user turn)", modules=TEMPLATE_MODULES),
    # The course GPT, torch.nn, torch.optim and the chat helpers are allowed; the course's ready-made
    # fine-tuning and training loops, and loading any shipped checkpoint, are not.
    Task("ch09_sft", "sft(model, tokenizer, conversations)", 4, "the fine-tuned model",
         "exact match of its greedy replies on generated instructions held out from you, at least 8%",
         modules=("llmcourse.sft", "llmcourse.recipes", "llmcourse.trainer", "llmcourse.training",
                  "llmcourse.pretrained", "llmcourse.checkpoint")),
)


def _expect_function(fn, task: str) -> None:
    if not getattr(fn, "__llmcourse_remote__", False) and not callable(fn):
        fail(f"{task}: expected a function, got {type(fn).__name__}")


def _snippet(text: str, at: int, width: int = 24) -> str:
    return ascii(text[max(0, at - width):at + width])


# ----------------------------------------------------------------- task 1: the chat template

def check_render_chat(student_fn) -> None:
    """render_chat(messages, add_generation_prompt) equals transformers' rendering of the course template."""
    _expect_function(student_fn, RENDER.name)
    for k, (what, messages, prompt) in enumerate(ref.conversations(0, "ch09.render_chat")):
        inputs = {"conversation": k, "kind": what}
        want = ref.hf_render(messages, prompt)
        got = call_student(student_fn, [dict(m) for m in messages], add_generation_prompt=prompt, task=RENDER,
                           inputs=inputs)
        if not isinstance(got, str):
            fail(f"render_chat{describe(inputs)}: expected a str, got "
                 f"{'None (is a `return` missing?)' if got is None else 'a ' + type(got).__name__}")
        if got == want:
            continue
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        why = next((why for why, wrong in ref.RENDER_MISTAKES if wrong(messages, prompt) == got), None)
        fail(f"render_chat (vs apply_chat_template){describe(inputs)}: the text differs from character {at} on: "
             f"expected ...{_snippet(want, at)}..., got ...{_snippet(got, at)}... ({len(want)} vs {len(got)} "
             f"characters)" + (f" - {why}" if why else ""))


# ----------------------------------------------------------------- task 2: labels

def labels_probe(student_fn, conversations):
    """PROBE: ``student_fn(messages, tokenizer)`` with the course tokenizer, for each conversation."""
    from llmcourse.pretrained import load_tokenizer

    tok = load_tokenizer()
    out = []
    for messages in conversations:
        result = student_fn([dict(m) for m in messages], tok)
        if result is None:
            return {"problem": "your function returned None (is a `return` missing?) - return (input_ids, labels)"}
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            return {"problem": f"expected a pair (input_ids, labels), got a {type(result).__name__}"}
        out.append([x.detach().cpu().clone() if isinstance(x, torch.Tensor) else x for x in result])
    return {"results": out}


def check_assistant_labels(student_fn) -> None:
    """assistant_labels(messages, tokenizer) gives the ids and labels of llmcourse.chat.build_labels."""
    _expect_function(student_fn, LABELS.name)
    cases = [c for c in ref.conversations(0, "ch09.assistant_labels", ascii_only=True)
             if any(m["role"] == "assistant" for m in c[1])]
    convs = [messages for _, messages, _ in cases]
    inputs = {"conversations": len(convs)}
    out = probe_result(run_probe(labels_probe, student_fn, convs, task=LABELS, inputs=inputs),
                       what=LABELS.name, inputs=inputs)
    tok = ref.course_tokenizer()
    for k, ((what, messages, _), pair) in enumerate(zip(cases, out["results"])):
        inputs = {"conversation": k, "kind": what}
        want_ids, want_labels = ref.reference_labels(messages)
        pieces = [tok.decode([int(i)]) for i in want_ids]
        ids, labels = (to_array(x, what=name, inputs=inputs) for x, name in zip(pair, ("input_ids", "labels")))
        for arr, name in ((ids, "input_ids"), (labels, "labels")):
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                fail(f"assistant_labels{describe(inputs)}: {name} must be a (T,) tensor of ints, got shape "
                     f"{tuple(arr.shape)} and dtype {arr.dtype}")
        if ids.tolist() != want_ids.tolist():
            at = next((t for t, (a, b) in enumerate(zip(ids.tolist(), want_ids.tolist())) if a != b),
                      min(len(ids), len(want_ids)))
            got_text = tok.decode([int(i) for i in ids[at:at + 4]]) if at < len(ids) else "(the end)"
            want_text = "".join(pieces[at:at + 4]) if at < len(want_ids) else "(the end)"
            fail(f"assistant_labels (vs llmcourse.chat.build_labels){describe(inputs)}: input_ids differ from "
                 f"token {at} on ({len(ids)} tokens, expected {len(want_ids)}): expected {ascii(want_text)}, got "
                 f"{ascii(got_text)} - the ids are the tokens of the rendered conversation (<|bos|> and <|eos|> as "
                 f"special tokens)")
        if labels.shape != ids.shape:
            fail(f"assistant_labels{describe(inputs)}: labels has {len(labels)} entries, input_ids {len(ids)}: one "
                 f"label per token")
        if labels.tolist() == want_labels.tolist():
            continue
        t = next(t for t, (a, b) in enumerate(zip(labels.tolist(), want_labels.tolist())) if a != b)
        why = next((why for why, wrong in ref.label_mistakes(messages, want_ids, want_labels)
                    if wrong.tolist() == labels.tolist()), None)
        fail(f"assistant_labels (vs llmcourse.chat.build_labels){describe(inputs)}: labels[{t}] is {int(labels[t])} "
             f"but expected {int(want_labels[t])}, at token {t} {ascii(pieces[t])} (in ...{ascii(''.join(pieces[max(0, t - 4):t + 3]))}...)"
             + (f" - {why}" if why else " - a token is trained (label = its id) exactly when it belongs to an "
                                        "assistant reply (its reasoning, answer and closing <|eos|>)"))


# ----------------------------------------------------------------- task 3: supervised fine-tuning

# One family, because the run must fit the grading time. In ~150 steps of 4 packed rows (~15 s on a
# quiet core, 40-70 s on a busy 2-core machine) the 1.07 M-parameter base model learns the JSON
# format and to count words; 300 steps on all eight families teach almost nothing (4.5% exact
# match), and within this budget json beat uppercase, reverse, sort, extract and qa (0-17%).
# Measured exact match on the 150 held-out instructions: the base model 0% (also 2-shot); the
# solution 15% (no secret), 13%, 31%, 37% (secrets "course secret A", "another secret", "3"); the
# other recipes in tests/test_checks_ch09.py 11% (Adam, padded rows) and 31% (the course's pack, AdamW
# with weight decay) without a secret. Masking the closing <|eos|> gives 0% (the replies never stop).
# Six more secrets ("s1".."s6", measured at load ~2): 16%, 15%, 8.0%, 27%, 20%, 18% - the spread comes
# from the secret's training draw as much as from the 150 questions (standard error ~2.5 points). Every
# planted mistake scores 0%, so the bar sits at half the lowest correct score seen: 6 of 150 right.
SFT_FAMILIES = ("json",)
N_TRAIN, N_TEST, MAX_NEW_TOKENS = 1000, 150, 24
MIN_EXACT_MATCH = 0.04


def sft_data() -> tuple[list, list]:
    """(training conversations, held-out examples): generated from the course secret, sharing no problem."""
    from llmcourse.chat import example_to_messages
    from llmcourse.instructions import fresh_examples, problem_key

    train = fresh_examples(N_TRAIN, hidden_seed(0, "ch09.sft.train") % 2**32, families=SFT_FAMILIES)
    seen = {problem_key(ex) for ex in train}
    test = [ex for ex in fresh_examples(N_TEST + 50, hidden_seed(1, "ch09.sft.test") % 2**32, families=SFT_FAMILIES)
            if problem_key(ex) not in seen][:N_TEST]
    return [example_to_messages(ex) for ex in train], test


def sft_probe(student_fn, conversations):
    """PROBE: the shipped base model and tokenizer, fine-tuned by ``student_fn`` on one CPU thread, seed 0.

    What comes back (the model) stays in the sandbox; the trusted side gets a handle on it.
    """
    import torch as _torch

    from llmcourse.pretrained import load_base

    threads = _torch.get_num_threads()
    _torch.set_num_threads(1)
    try:
        with _torch.random.fork_rng(devices=[]):
            _torch.manual_seed(0)
            model, tok = load_base()
            return student_fn(model, tok, [[dict(m) for m in c] for c in conversations])
    finally:
        _torch.set_num_threads(threads)


def reply_probe(model, prompts, max_new_tokens):
    """PROBE: greedy replies of ``model`` to rendered prompts (each ends with ``assistant:\\n``), up to <|eos|>.

    Prompts of one token length go in one batch. Returns ``{"replies": [str, ...]}`` or ``{"problem": ...}``.
    """
    import torch as _torch

    from llmcourse.pretrained import load_tokenizer

    if model is None:
        return {"problem": "your function returned None (is a `return` missing?) - return the fine-tuned model"}
    if not isinstance(model, _torch.nn.Module):
        return {"problem": f"expected the fine-tuned torch.nn.Module, got a {type(model).__name__}"}
    tok = load_tokenizer()
    eos = tok.special_tokens["<|eos|>"]
    encoded = [tok.encode(p) for p in prompts]
    replies = [""] * len(prompts)
    params = list(model.parameters())
    device = params[0].device if params else _torch.device("cpu")
    threads = _torch.get_num_threads()
    _torch.set_num_threads(1)
    try:
        model.eval()
        with _torch.no_grad():
            for length in sorted({len(e) for e in encoded}):
                rows = [i for i, e in enumerate(encoded) if len(e) == length]
                idx = _torch.tensor([encoded[i] for i in rows], dtype=_torch.long, device=device)
                done = _torch.zeros(len(rows), dtype=_torch.bool, device=device)
                for _ in range(max_new_tokens):
                    out = model(idx)
                    logits = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
                    if not isinstance(logits, _torch.Tensor) or logits.ndim != 3 or logits.shape[:2] != idx.shape:
                        return {"problem": f"model(idx) for idx of shape {tuple(idx.shape)} must return logits "
                                           f"(B, T, V) (or a tuple starting with them), got "
                                           f"{getattr(logits, 'shape', type(logits).__name__)}"}
                    nxt = logits[:, -1].argmax(dim=-1)
                    idx = _torch.cat([idx, nxt[:, None]], dim=1)
                    done |= nxt == eos
                    if bool(done.all()):
                        break
                for r, i in enumerate(rows):
                    new = idx[r, length:].tolist()
                    replies[i] = tok.decode(new[:new.index(eos)] if eos in new else new)
    finally:
        _torch.set_num_threads(threads)
    return {"replies": replies}


def check_sft(student_fn) -> None:
    """sft(model, tokenizer, conversations) -> a model whose greedy replies reach MIN_EXACT_MATCH on held-out data.

    The model trains on conversations generated from the course secret and is asked other generated
    instructions: only their prompts enter the sandbox; the answers stay here, and so does the scoring.
    """
    from llmcourse.instructions import exact_match

    _expect_function(student_fn, SFT.name)
    conversations, test = sft_data()
    inputs = {"conversations": len(conversations), "families": ", ".join(SFT_FAMILIES), "held-out": len(test)}
    model = run_probe(sft_probe, student_fn, conversations, task=SFT, inputs=inputs)
    prompts = [ref.hf_render(_prompt_of(ex), True) for ex in test]  # 'user:\n...\nassistant:\n'
    out = probe_result(run_probe(reply_probe, model, prompts, MAX_NEW_TOKENS, task=SFT, inputs=inputs),
                       what=SFT.name, inputs=inputs)
    replies = out.get("replies")
    if not isinstance(replies, list) or len(replies) != len(test):
        fail(f"{SFT.name}{describe(inputs)}: no replies came back from the model")
    hits = [exact_match(str(r), ex) for r, ex in zip(replies, test)]
    score = float(np.mean(hits))
    if score < MIN_EXACT_MATCH:
        misses = [(ex, r) for ex, r, h in zip(test, replies, hits) if not h][:2]
        shown = "; ".join(f"asked {ascii(ex.input)}, it replied {ascii(r[:40])}" for ex, r in misses)
        fail(f"{SFT.name}{describe(inputs)}: exact match on held-out instructions is {score:.0%} "
             f"({sum(hits)} of {len(test)}), below {MIN_EXACT_MATCH:.0%} (the base model scores 0%) - e.g. {shown}. "
             f"Train only on the replies (labels -100 on the prompt), with <|eos|> after each, for a few hundred "
             f"AdamW steps at lr ~2e-3, and return the model.")


def _prompt_of(example) -> list[dict]:
    from llmcourse.chat import example_to_messages

    return example_to_messages(example)[:-1]


__all__ = ["TASKS", "check_render_chat", "check_assistant_labels", "check_sft", "labels_probe", "sft_probe",
           "reply_probe", "sft_data", "MIN_EXACT_MATCH"]
