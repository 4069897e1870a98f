"""The chapter 9 checks are fair both ways: correct answers get full marks, planted mistakes fail.

The solution functions come from the nbgrader source notebook (setup and answer cells, run as a
notebook kernel would). Beside them each task has correct implementations written differently
(string building by a loop, by join, by a table of format strings; labels by segments, by a regex
split, by byte offsets, by token counts of rendered prefixes; fine-tuning with another optimiser,
batching and learning rate), which must
pass too. Each wrong implementation is a mistake a student could plausibly make; each must make
its check raise CheckFailed naming what differs.

A fine-tuning run takes ~25 s on one core of this 2-core machine under load (~45-90 s when it is
busy), so the SFT check runs here for the solution under every secret, and once for each other
implementation and each planted mistake that trains.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autograder.checks import _ch09_references as ref
from autograder.checks import ch09_sft as checks
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, static_violations
from tests.notebook_kernel import assert_checks_hold, correct, kernel, planted, solution_of

ASSIGNMENT = "ch09_sft"
# The mistake the nbgrader round trip plants: no <|eos|> after an assistant turn. render_chat is
# called by assistant_labels and, through it, by sft: those tasks may lose points too.
ROUND_TRIP_MISTAKE = ("ch09_render_chat_answer",
                      "def render_chat(messages, add_generation_prompt=False):\n"
                      "    text = '<|bos|>'\n"
                      "    for m in messages:\n"
                      "        text += m['role'] + ':\\n'\n"
                      "        if m['role'] == 'assistant' and m.get('reasoning_content') is not None:\n"
                      "            text += '<think>\\n' + m['reasoning_content'].strip() + '\\n</think>\\n'\n"
                      "        text += m['content'].strip() + '\\n'\n"
                      "    return text + ('assistant:\\n' if add_generation_prompt else '')\n")

pytestmark = pytest.mark.ch09

SETUP = "import math\nimport torch\nfrom torch import nn\n"


def check_of(task):
    return getattr(checks, task.check)


# ----------------------------------------------------------------- the notebook and the references

@pytest.mark.parametrize("task", checks.TASKS[:2], ids=lambda t: t.grade_id)
def test_solution_passes_check(task):
    check_of(task)(solution_of(ASSIGNMENT)[task.name])


def test_reference_render_is_the_course_render_and_labels_follow_it():
    from llmcourse.chat import build_labels, render

    for _, messages, prompt in ref.conversations(0, "test"):
        assert ref.hf_render(messages, prompt) == render(messages, prompt)
        if any(m["role"] == "assistant" for m in messages):
            ids, labels = build_labels(messages, ref.course_tokenizer())
            assert ids.tolist() == ref.course_tokenizer().encode(render(messages))
            assert ((labels == -100) | (labels == ids)).all()


def test_conversations_cover_the_brief():
    cases = ref.conversations(0, "test")
    kinds = " | ".join(what for what, _, _ in cases)
    for part in ("a system message", "no system message", "reasoning", "whitespace", "ending with a user turn",
                 "add_generation_prompt=True", "4 turns"):
        assert part in kinds, part
    assert any(not p and m[-1]["role"] == "user" for _, m, p in cases), "a last user turn without the prompt"
    assert any(not s.isascii() for _, m, _ in cases for x in m for s in (x["content"],))
    assert all(s.isascii() for _, m, _ in ref.conversations(0, "t", ascii_only=True) for x in m
               for s in (x["content"],))


def test_every_render_mistake_changes_some_case():
    cases = ref.conversations(0, "ch09.render_chat")
    for why, wrong in ref.RENDER_MISTAKES:
        assert any(wrong(m, p) != ref.hf_render(m, p) for _, m, p in cases), why


# ----------------------------------------------------------------- task 1: rendering

def render_join(messages, add_generation_prompt=False):
    """A list of parts, one join at the end."""
    parts = ["<|bos|>"]
    for m in messages:
        parts.append(f"{m['role']}:\n")
        if m["role"] == "assistant":
            thought = m.get("reasoning_content")
            if thought is not None:
                parts += ["<think>\n", thought.strip(), "\n</think>\n"]
            parts += [m["content"].strip(), "<|eos|>"]
        else:
            parts += [m["content"].strip(), "\n"]
    if add_generation_prompt:
        parts.append("assistant:\n")
    return "".join(parts)


FORMATS = {"system": "system:\n{c}\n", "user": "user:\n{c}\n", "assistant": "assistant:\n{t}{c}<|eos|>"}


def render_table(messages, add_generation_prompt=False):
    """A table of format strings per role, filled with str.format."""
    out = "<|bos|>" + "".join(
        FORMATS[m["role"]].format(c=m["content"].strip(),
                                  t=f"<think>\n{m['reasoning_content'].strip()}\n</think>\n"
                                  if m.get("reasoning_content") is not None else "")
        for m in messages)
    return out + "assistant:\n" * bool(add_generation_prompt)


def render_regex_trim(messages, add_generation_prompt=False):
    """Stripping by a regular expression, the header added at the start of each piece."""
    import re

    def trim(s):
        return re.sub(r"^\s+|\s+$", "", s)

    text = ""
    for i, m in enumerate(messages):
        body = trim(m["content"])
        if m["role"] == "assistant":
            if "reasoning_content" in m and m["reasoning_content"] is not None:
                body = "<think>\n" + trim(m["reasoning_content"]) + "\n</think>\n" + body
            body += "<|eos|>"
        else:
            body += "\n"
        text += ("<|bos|>" if i == 0 else "") + m["role"] + ":\n" + body
    return text + ("assistant:\n" if add_generation_prompt else "")


RENDER_CORRECT = correct(render_join, render_table, render_regex_trim)


@pytest.mark.parametrize("fn", RENDER_CORRECT)
def test_check_render_chat_gives_full_marks_to_correct_variants(fn):
    checks.check_render_chat(fn)


def _render_with(**mistake):
    def render_chat(messages, add_generation_prompt=False):
        return ref._render(messages, add_generation_prompt, **mistake)
    return render_chat


def render_no_eos(messages, add_generation_prompt=False):
    return _render_with(eos=False)(messages, add_generation_prompt)


def render_drops_system(messages, add_generation_prompt=False):
    return _render_with(system=False)(messages, add_generation_prompt)


def render_default_system(messages, add_generation_prompt=False):
    return _render_with(default_system=True)(messages, add_generation_prompt)


def render_always_prompt(messages, add_generation_prompt=False):
    return _render_with(prompt=True)(messages, add_generation_prompt)


def render_never_prompt(messages, add_generation_prompt=False):
    return _render_with(prompt=False)(messages, add_generation_prompt)


def render_no_strip(messages, add_generation_prompt=False):
    return _render_with(strip=False)(messages, add_generation_prompt)


def render_think_inline(messages, add_generation_prompt=False):
    return _render_with(think_newlines=False)(messages, add_generation_prompt)


def render_strip_spaces_only(messages, add_generation_prompt=False):
    """strip(" "): newlines and tabs around the contents stay."""
    text = "<|bos|>"
    for m in messages:
        text += m["role"] + ":\n"
        if m["role"] == "assistant":
            if m.get("reasoning_content") is not None:
                text += "<think>\n" + m["reasoning_content"].strip(" ") + "\n</think>\n"
            text += m["content"].strip(" ") + "<|eos|>"
        else:
            text += m["content"].strip(" ") + "\n"
    return text + ("assistant:\n" if add_generation_prompt else "")


def render_bos_per_message(messages, add_generation_prompt=False):
    return "".join(render_join([m]) for m in messages) + ("assistant:\n" if add_generation_prompt else "")


RENDER_MISTAKES = planted(
    (render_no_eos, r"conversation=0.*the text differs from character \d+ on.*every assistant turn ends with <\|eos\|>"),
    (render_drops_system, r"conversation=1, kind=a system message.*the system message is missing"),
    (render_default_system, r"conversation=0, kind=no system message.*a system message was added"),
    (render_always_prompt, r"conversation=0.*'assistant:\\n' must end the text only when add_generation_prompt"),
    (render_never_prompt, r"conversation=2.*add_generation_prompt=True.*must end the text only when"),
    (render_no_strip, r"whitespace around the contents.*stripped of outer whitespace"),
    (render_think_inline, r"reasoning.*'<think>\\n' and '\\n</think>\\n'"),
    (render_strip_spaces_only, r"whitespace around the contents.*expected .*got "),
    (render_bos_per_message, r"conversation=0.*differs from character \d+ on"),
)


@pytest.mark.parametrize("wrong, match", RENDER_MISTAKES)
def test_check_render_chat_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_render_chat(wrong)


# ----------------------------------------------------------------- task 2: labels

def labels_by_segments(messages, tokenizer, strip=str.strip):
    """Each header and content tokenised on its own, the replies' ids kept as labels."""
    eos = tokenizer.special_tokens["<|eos|>"]
    ids, labels = tokenizer.encode("<|bos|>"), [-100]
    for m in messages:
        head = tokenizer.encode(m["role"] + ":\n")
        ids += head
        labels += [-100] * len(head)
        if m["role"] == "assistant":
            text = strip(m["content"])
            if m.get("reasoning_content") is not None:
                text = "<think>\n" + strip(m["reasoning_content"]) + "\n</think>\n" + text
            body = tokenizer.encode(text) + [eos]
            labels += body
        else:
            body = tokenizer.encode(strip(m["content"]) + "\n")
            labels += [-100] * len(body)
        ids += body
    return torch.tensor(ids), torch.tensor(labels)


def labels_by_offsets(messages, tokenizer):
    """The whole text tokenised once; a token is trained when its bytes lie inside a reply's span."""
    text, spans = "", []
    for i, m in enumerate(messages):
        text += ("<|bos|>" if i == 0 else "") + m["role"] + ":\n"
        start = len(text.encode())
        text += render_join([m])[len("<|bos|>" + m["role"] + ":\n"):]
        if m["role"] == "assistant":
            spans.append((start, len(text.encode())))
    ids = tokenizer.encode(text)
    labels, pos = [], 0
    for t in ids:
        end = pos + len(tokenizer.token_bytes(t))
        labels.append(t if any(a <= pos and end <= b for a, b in spans) else -100)
        pos = end
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def labels_by_prefixes(messages, tokenizer):
    """Token counts of rendered prefixes: reply i runs from len(prompt before it) to len(text through it)."""
    ids = tokenizer.encode(render_table(messages))
    labels = torch.full((len(ids),), -100)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            a = len(tokenizer.encode(render_table(messages[:i], add_generation_prompt=True)))
            b = len(tokenizer.encode(render_table(messages[:i + 1])))
            labels[a:b] = torch.tensor(ids[a:b])
    return torch.tensor(ids), labels


def labels_by_regex(messages, tokenizer):
    """The rendered text cut by a regular expression into replies and the rest, each piece tokenised."""
    import re

    text = render_join(messages)
    ids, labels, pos = [], [], 0
    for match in re.finditer(r"assistant:\n(.*?<\|eos\|>)", text, flags=re.S):
        before, reply = tokenizer.encode(text[pos:match.start(1)]), tokenizer.encode(match.group(1))
        ids += before + reply
        labels += [-100] * len(before) + reply
        pos = match.end(1)
    rest = tokenizer.encode(text[pos:]) if pos < len(text) else []
    return torch.tensor(ids + rest), torch.tensor(labels + [-100] * len(rest))


LABELS_CORRECT = correct(labels_by_segments, labels_by_regex, labels_by_offsets, labels_by_prefixes)


@pytest.mark.parametrize("fn", LABELS_CORRECT)
def test_check_assistant_labels_gives_full_marks_to_correct_variants(fn):
    checks.check_assistant_labels(fn)


def labels_keep_header(messages, tokenizer):
    ids, labels = labels_by_segments(messages, tokenizer)
    n = len(tokenizer.encode("assistant:\n"))
    for t in range(1, len(ids)):
        if labels[t] != -100 and labels[t - 1] == -100:
            labels[t - n:t] = ids[t - n:t]
    return ids, labels


def labels_train_user(messages, tokenizer):
    ids, labels = labels_by_segments(messages, tokenizer)
    return ids, ids.clone()


def labels_mask_eos(messages, tokenizer):
    ids, labels = labels_by_segments(messages, tokenizer)
    return ids, labels.masked_fill(ids == tokenizer.special_tokens["<|eos|>"], -100)


def labels_shifted(messages, tokenizer):
    ids, labels = labels_by_segments(messages, tokenizer)
    return ids, torch.cat([labels[1:], torch.tensor([-100])])


def labels_last_turn_only(messages, tokenizer):
    ids, labels = labels_by_segments(messages, tokenizer)
    last = max(t for t in range(len(ids)) if labels[t] != -100 and (t == 0 or labels[t - 1] == -100))
    labels[:last] = -100
    return ids, labels


def labels_no_eos_token(messages, tokenizer):
    """Encodes '<|eos|>' nowhere: the replies end without it (ids and labels both shorter)."""
    ids, labels = labels_by_segments(messages, tokenizer)
    keep = ids != tokenizer.special_tokens["<|eos|>"]
    return ids[keep], labels[keep]


def labels_unstripped(messages, tokenizer):
    """The contents are tokenised as given, whitespace and all."""
    return labels_by_segments(messages, tokenizer, strip=lambda text: text)


LABEL_MISTAKES = planted(
    (labels_keep_header, r"labels\[\d+\] is \d+ but expected -100.*'assistant:\\n' header is trained"),
    (labels_train_user, r"conversation=0.*labels\[0\] is \d+ but expected -100.*every token is trained"),
    (labels_mask_eos, r"labels\[\d+\] is -100 but expected \d+, at token \d+ '<\|eos\|>'.*closing <\|eos\|>"),
    (labels_shifted, r"labels are shifted by one: labels\[t\] is the label of token t"),
    (labels_last_turn_only, r"conversation=4, kind=no system message, 3 turns.*only the last assistant turn"),
    (labels_no_eos_token, r"input_ids differ from token \d+ on .*expected '<\|eos\|>"),
    (labels_unstripped, r"input_ids differ from token \d+ on"),
)


@pytest.mark.parametrize("wrong, match", LABEL_MISTAKES)
def test_check_assistant_labels_rejects(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_assistant_labels(wrong)


def test_label_mistakes_all_differ_from_the_reference():
    for _, messages, _ in ref.conversations(0, "ch09.assistant_labels", ascii_only=True)[4:6]:
        ids, labels = ref.reference_labels(messages)
        for why, wrong in ref.label_mistakes(messages, ids, labels):
            assert wrong.tolist() != labels.tolist(), why


# ----------------------------------------------------------------- task 3: fine-tuning

# Exact match on the 150 held-out instructions (the bar is 4%): the solution 15% without a secret,
# 13%, 31% and 37% under the three secrets below; sft_adam_padded 11% and sft_course_packing 31%
# without a secret; the base model, a memoriser of the training set and a run that masks <|eos|> 0%.
# Training on every token (the prompt too) with the solution's recipe still passes the bar (measured
# once, without a secret): in this short run it does not hurt enough to be planted as a mistake.


def sft_adam_padded(model, tokenizer, conversations):
    """Adam at a constant 2e-3, one conversation per row padded to the longest, 12 per batch, 120 steps."""
    items = [labels_by_segments(m, tokenizer) for m in conversations]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(120):
        batch = [items[int(i)] for i in torch.randint(0, len(items), (12,))]
        t = max(len(x) for x, _ in batch)
        x = torch.stack([nn.functional.pad(a, (0, t - len(a))) for a, _ in batch])
        y = torch.stack([nn.functional.pad(b[1:], (0, t - len(b) + 1), value=-100) for _, b in batch])
        logits, _ = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def sft_course_packing(model, tokenizer, conversations):
    """The course's pack and next_token_targets, AdamW at 2e-3 with weight decay, 6 rows a batch, 110 steps."""
    from llmcourse.chat import next_token_targets, pack

    rows = pack([labels_by_offsets(m, tokenizer) for m in conversations], 128)
    targets = next_token_targets(rows["labels"], rows["doc_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))
    model.train()
    for _ in range(110):
        b = torch.randint(0, len(targets), (6,))
        _, loss = model(rows["input_ids"][b], targets[b], position_ids=rows["position_ids"][b],
                        doc_ids=rows["doc_ids"][b])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return model


SFT_CORRECT = correct(sft_adam_padded, sft_course_packing)


@pytest.mark.parametrize("fn", SFT_CORRECT)
def test_check_sft_gives_full_marks_to_correct_variants(fn, one_thread):
    checks.check_sft(fn)


def sft_returns_base(model, tokenizer, conversations):
    return model


def sft_forgot_return(model, tokenizer, conversations):
    sft_adam_padded(model, tokenizer, conversations[:10])


def sft_masks_eos(model, tokenizer, conversations):
    """Trains without the closing <|eos|>: the replies never stop."""
    eos = tokenizer.special_tokens["<|eos|>"]

    def labels(m, tok):
        ids, lab = labels_by_segments(m, tok)
        return ids, lab.masked_fill(ids == eos, -100)

    items = [labels(m, tokenizer) for m in conversations]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(120):
        batch = [items[int(i)] for i in torch.randint(0, len(items), (12,))]
        t = max(len(x) for x, _ in batch)
        x = torch.stack([nn.functional.pad(a, (0, t - len(a))) for a, _ in batch])
        y = torch.stack([nn.functional.pad(b[1:], (0, t - len(b) + 1), value=-100) for _, b in batch])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


class Memoriser(nn.Module):
    """Answers the prompts it was trained on from a table, anything else with <|eos|>."""

    def __init__(self, table, eos):
        super().__init__()
        self.table, self.eos = table, eos
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        logits = torch.full((*idx.shape, 2048), -1e4)
        for r, row in enumerate(idx.tolist()):
            for k in range(len(row)):
                seen = row[:k + 1]
                prompt = next((n for n in range(len(seen), 0, -1) if tuple(seen[:n]) in self.table), None)
                answer = self.table[tuple(seen[:prompt])] if prompt else []
                done = len(seen) - prompt if prompt else 0
                logits[r, k, answer[done] if done < len(answer) else self.eos] = 0.0
        return logits


def sft_memoriser(model, tokenizer, conversations):
    table = {}
    for messages in conversations:
        prompt = tokenizer.encode(render_join(messages[:-1], add_generation_prompt=True))
        table[tuple(prompt)] = tokenizer.encode(messages[-1]["content"]) + [tokenizer.special_tokens["<|eos|>"]]
    return Memoriser(table, tokenizer.special_tokens["<|eos|>"])


SFT_MISTAKES = planted(
    (sft_returns_base, r"sft for conversations=1000, families=json, held-out=150: exact match on held-out "
                       r"instructions is 0% \(0 of 150\), below"),
    (sft_forgot_return, r"returned None \(is a `return` missing\?\)"),
    (sft_masks_eos, r"exact match on held-out instructions is \d+% .*below"),
    (sft_memoriser, r"exact match on held-out instructions is 0% \(0 of 150\)"),
)


@pytest.mark.parametrize("wrong, match", SFT_MISTAKES)
def test_check_sft_rejects(wrong, match, one_thread):
    with pytest.raises(CheckFailed, match=match):
        checks.check_sft(wrong)


def test_memoriser_knows_the_training_set(one_thread):
    """The memoriser is right on what it saw: the held-out set, not the model class, is what fails it."""
    conversations, _ = checks.sft_data()
    tok = ref.course_tokenizer()
    model = sft_memoriser(None, tok, conversations[:20])
    prompts = [render_join(c[:-1], add_generation_prompt=True) for c in conversations[:20]]
    replies = checks.reply_probe(model, prompts, 24)["replies"]
    assert replies == [c[-1]["content"] for c in conversations[:20]]


def test_held_out_instructions_share_no_problem_with_the_training_ones():
    from llmcourse.chat import example_to_messages

    conversations, test = checks.sft_data()
    assert len(conversations) == checks.N_TRAIN and len(test) == checks.N_TEST
    assert {ex.family for ex in test} == set(checks.SFT_FAMILIES)
    asked = {c[0]["content"].split("\n", 1)[-1] for c in conversations}
    assert not any(example_to_messages(ex)[0]["content"].split("\n", 1)[-1] in asked for ex in test)


# ----------------------------------------------------------------- the guard

def test_guard_catches_apply_chat_template_and_jinja():
    ns = kernel(SETUP + "from llmcourse.chat import chat_tokenizer\n",
                "def render_chat(messages, add_generation_prompt=False):\n"
                "    return chat_tokenizer().apply_chat_template(messages, tokenize=False,\n"
                "                                                add_generation_prompt=add_generation_prompt)\n")
    with pytest.raises(ForbiddenCall, match=r"render_chat uses chat_tokenizer \(from llmcourse\.chat\)"):
        checks.check_render_chat(ns["render_chat"])
    ns = kernel(SETUP + "import jinja2\nfrom llmcourse.chat import CHAT_TEMPLATE\n",
                "def render_chat(messages, add_generation_prompt=False):\n"
                "    t = jinja2.Environment().from_string(CHAT_TEMPLATE)\n"
                "    return t.render(messages=messages, add_generation_prompt=add_generation_prompt)\n")
    with pytest.raises(ForbiddenCall, match=r"render_chat uses jinja2"):
        checks.check_render_chat(ns["render_chat"])


def test_guard_catches_the_course_render_at_run_time_without_source():
    ns = kernel(SETUP, "def render_chat(messages, add_generation_prompt=False):\n"
                "    import importlib\n"
                "    return importlib.import_module('llmcourse.' + 'chat').render(messages, add_generation_prompt)\n",
                keep_source=False)
    with pytest.raises(ForbiddenCall, match=r"your code called llmcourse\.chat"):
        checks.check_render_chat(ns["render_chat"])


def test_guard_catches_build_labels_and_the_hf_assistant_mask():
    ns = kernel(SETUP + "from llmcourse.chat import build_labels\n",
                "def assistant_labels(messages, tokenizer):\n"
                "    return build_labels(messages, tokenizer)\n")
    with pytest.raises(ForbiddenCall, match=r"assistant_labels uses build_labels"):
        checks.check_assistant_labels(ns["assistant_labels"])
    ns = kernel(SETUP, "def assistant_labels(messages, tokenizer):\n"
                "    import importlib\n"
                "    hf = importlib.import_module('llmcourse.pretrained').load_tokenizer('hf')\n"
                "    out = hf.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)\n"
                "    ids = torch.tensor(out['input_ids'])\n"
                "    return ids, ids.masked_fill(torch.tensor(out['assistant_masks']) == 0, -100)\n",
                keep_source=False)
    with pytest.raises(ForbiddenCall, match=r"your code called transformers"):
        checks.check_assistant_labels(ns["assistant_labels"])


def test_guard_catches_a_shipped_checkpoint_in_sft():
    ns = kernel(SETUP, "def sft(model, tokenizer, conversations):\n"
                "    from llmcourse.pretrained import load_base\n"
                "    return load_base(name='sft')[0]\n")
    with pytest.raises(ForbiddenCall, match=r"sft imports from llmcourse\.pretrained"):
        checks.check_sft(ns["sft"])


def test_guard_lets_the_solutions_and_the_correct_variants_through():
    variants = {"check_render_chat": RENDER_CORRECT, "check_assistant_labels": LABELS_CORRECT,
                "check_sft": SFT_CORRECT}
    for task in checks.TASKS:
        for fn in (solution_of(ASSIGNMENT)[task.name], *(p.values[0] for p in variants[task.check])):
            assert static_violations(fn, modules=task.modules, callables=task.callables) == [], fn.__name__


def test_the_graders_source_look_passes_the_solution_notebook():
    """Read as the grader reads it: names resolve through every import of the notebook (a local
    variable called `reply` once read as llmcourse.chat.reply, imported by an ungraded cell)."""
    import nbformat

    from autograder.static import Submission, tamper_findings
    from tests.notebook_kernel import notebook_path

    cells = [c for c in nbformat.read(notebook_path(ASSIGNMENT), as_version=4).cells if c.cell_type == "code"]
    answers = [c.source for c in cells if c.metadata.get("nbgrader", {}).get("solution")]
    others = [c.source.split("### BEGIN HIDDEN TESTS")[0] for c in cells
              if not c.metadata.get("nbgrader", {}).get("solution")]
    submission = Submission(answers, others)
    assert tamper_findings(submission) == []
    for task in checks.TASKS:
        assert submission.violations(task.name, task.modules, task.callables) == [], task.grade_id


# ----------------------------------------------------------------- under a course secret

SECRETS = ("course secret A", "another secret", "3")
CORRECT = {"check_render_chat": [p.values[0] for p in RENDER_CORRECT],
           "check_assistant_labels": [p.values[0] for p in LABELS_CORRECT]}
MISTAKES = {"check_render_chat": RENDER_MISTAKES, "check_assistant_labels": LABEL_MISTAKES}


@pytest.mark.parametrize("secret", SECRETS)
def test_checks_hold_under_several_course_secrets(monkeypatch, secret, one_thread):
    """With a secret the inputs change; the solution and the correct variants still pass, mistakes fail.

    sft runs once per secret, with the solution only: it trains a network.
    """
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    assert_checks_hold(ASSIGNMENT, checks, checks.TASKS, CORRECT, MISTAKES)


def test_course_secret_changes_the_inputs(monkeypatch):
    public = ref.conversations(0, "ch09.render_chat")
    public_train, public_test = checks.sft_data()
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRETS[0])
    hidden = ref.conversations(0, "ch09.render_chat")
    assert [w for w, _, _ in public] == [w for w, _, _ in hidden]
    assert all(a[1] != b[1] for a, b in zip(public, hidden))
    hidden_train, hidden_test = checks.sft_data()
    assert hidden_train != public_train and hidden_test != public_test

