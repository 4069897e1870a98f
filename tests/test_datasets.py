import hashlib

import numpy as np
import pytest

from llmcourse.datasets import english_corpus, load_digits, load_text, train_test_split


def test_load_digits_shapes_ranges_and_split():
    split = load_digits(test_fraction=0.2, seed=0)
    X_train, y_train, X_test, y_test = split
    assert X_train.shape[1] == 64 and X_train.dtype == np.float32
    assert len(X_train) + len(X_test) == 1797
    assert len(X_test) == round(1797 * 0.2)
    assert 0.0 <= X_train.min() and X_train.max() <= 1.0
    assert set(np.unique(y_train)) == set(range(10))


def test_load_digits_is_deterministic_and_seed_dependent():
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)


def test_load_digits_images_layout():
    split = load_digits(images=True)
    assert split.X_train.shape[1:] == (1, 8, 8)


def test_english_corpus_is_real_prose_and_stable():
    text = english_corpus()
    assert len(text) > 300_000
    words = text.split()
    assert len(words) > 40_000
    for common in ("the", "and", "of", "is"):
        assert words.count(common) > 500
    assert english_corpus() == text


def test_train_test_split_validates_arguments():
    X, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="same number of rows"):
        train_test_split(X, y[:5])
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(X, y, test_fraction=1.5)
    with pytest.raises(ValueError, match="empty"):
        train_test_split(X[:2], y[:2], test_fraction=0.1)


def test_load_text_reads_local_file_and_checks_digest(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("héllo", encoding="utf-8")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_text(path, sha256=digest) == "héllo"
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_text(path, sha256="0" * 64)
    with pytest.raises(FileNotFoundError):
        load_text(tmp_path / "missing.txt")


def test_load_text_url_needs_digest_and_fails_clearly_offline(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        load_text("https://example.invalid/x.txt")
    with pytest.raises(ConnectionError, match="offline"):
        load_text("http://127.0.0.1:9/x.txt", sha256="0" * 64, cache_dir=tmp_path, timeout=2)
