"""Learning from preferences: the Bradley-Terry reward-model loss, sequence log-probabilities, DPO.

People find it easier to say which of two answers is better than to write the best answer.
RLHF turns such comparisons into a reward model; DPO skips the reward model and trains the
policy on the comparisons directly:

* ``bradley_terry_probability``, ``bradley_terry_loss`` - P(chosen > rejected) = sigma(r_c - r_r)
  (Bradley & Terry 1952) and its negative log-likelihood, the reward-model loss of InstructGPT
  (Ouyang et al. 2022, eq. 1), with Llama 2's optional margin (Touvron et al. 2023);
* ``sequence_logprobs`` - log pi(y | x) of each sequence, summed (or averaged) over the tokens
  that ``labels`` marks, with the next-token shift done here;
* ``dpo_loss`` - Direct Preference Optimization (Rafailov et al. 2023, eq. 7), with cDPO's
  label smoothing (Mitchell 2023), returning the implicit rewards beta log(pi / pi_ref);
* ``kl_regularized_optimum`` - pi*(y) ∝ pi_ref(y) exp(r(y) / beta), the policy that maximises
  E[r] - beta KL(pi || pi_ref): the closed form DPO is derived from.

Shapes: B batch (pairs, or sequences), T tokens, V vocabulary.

Taught in: book/10-rlhf
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair(chosen, rejected, names=("chosen_rewards", "rejected_rewards")) -> None:
    for name, x in zip(names, (chosen, rejected)):
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {type(x).__name__} "
                            f"{getattr(x, 'dtype', '')}")
    if chosen.shape != rejected.shape:
        raise ValueError(f"{names[0]} {tuple(chosen.shape)} and {names[1]} {tuple(rejected.shape)} must have the "
                         f"same shape: entry i of each belongs to pair i")


def bradley_terry_probability(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """P(chosen preferred over rejected) = sigma(r_c - r_r) = e^{r_c} / (e^{r_c} + e^{r_r}); shape (B,).

    Only the difference of the two rewards matters: adding a constant to both changes nothing,
    which is why a reward model's scale and offset are arbitrary.
    """
    _pair(chosen_rewards, rejected_rewards)
    return torch.sigmoid(chosen_rewards - rejected_rewards)


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None,
                       reduction: str = "mean") -> Tensor:
    """-log sigma(r_c - r_r - m), averaged over the pairs: the reward model's loss.

    chosen_rewards, rejected_rewards: (B,) scalar rewards of the preferred and the other
    answer. ``margin`` m (a number or (B,)) asks the chosen answer to win by at least m (Llama 2
    uses larger margins for clearer preferences). Written as softplus(-(r_c - r_r - m)), which
    stays finite for differences in the thousands. ``reduction="none"`` returns the (B,) losses.
    Two rewards that are equal cost log 2 = 0.693.
    """
    _pair(chosen_rewards, rejected_rewards)
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = F.softplus(-diff)
    if reduction == "none":
        return losses
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return losses.mean()


def sequence_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = -100, average: bool = False) -> Tensor:
    """log pi(labelled tokens | what comes before them), per sequence: logits (B, T, V), labels (B, T) -> (B,).

    ``labels`` are **not** shifted: they are the input ids themselves (Hugging Face's ``labels``
    convention), with ``ignore_index`` on the tokens that do not count (the prompt, padding).
    This function does the shift: the logits at position t predict token t + 1, so
    ``logits[:, :-1]`` score ``labels[:, 1:]``, and ``labels[:, 0]`` is never scored. The
    result sums log softmax(logits)[label] over the counted tokens (``average=True``: divides
    by their number); a row with no counted token gives 0, as in trl.
    """
    if not isinstance(logits, Tensor) or not logits.dtype.is_floating_point or logits.ndim != 3:
        raise TypeError(f"logits must be a floating-point (B, T, V) tensor, got {type(logits).__name__} "
                        f"{tuple(getattr(logits, 'shape', ()))}")
    if labels.shape != logits.shape[:2] or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be integer ids of shape {tuple(logits.shape[:2])} (B, T), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    shifted_logits = logits[:, :-1]                     # (B, T-1, V): position t predicts token t + 1
    targets = labels[:, 1:].long()                      # (B, T-1)
    counted = targets != ignore_index
    if ((targets < 0) | (targets >= logits.shape[-1]))[counted].any():
        raise ValueError(f"labels must be token ids in [0, {logits.shape[-1]}) or ignore_index={ignore_index}")
    picked = F.log_softmax(shifted_logits, dim=-1).gather(-1, targets.masked_fill(~counted, 0).unsqueeze(-1))
    per_token = torch.where(counted, picked.squeeze(-1), torch.zeros_like(picked.squeeze(-1)))
    total = per_token.sum(dim=1)
    if average:
        return total / counted.sum(dim=1).clamp(min=1).to(total.dtype)
    return total


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """The DPO loss per pair (Rafailov et al. 2023, eq. 7) and the implicit rewards: (losses, chosen, rejected).

    Inputs (B,): summed log-probabilities (``sequence_logprobs``) of the chosen and the rejected
    answer under the policy and under the frozen reference. The implicit reward of an answer is
    beta (log pi - log pi_ref); with the margin h = chosen reward - rejected reward,

        loss = -(1 - eps) log sigma(h) - eps log sigma(-h),

    where eps = ``label_smoothing`` is cDPO's probability that a label is flipped (Mitchell
    2023; trl 1.16 keeps this form only in its ``aot`` losses, its ``sigmoid`` loss is eps = 0).
    The rewards come back detached, for logging, as in trl. Returns three (B,) tensors.
    """
    names = ("policy_chosen_logps", "policy_rejected_logps")
    _pair(policy_chosen_logps, policy_rejected_logps, names)
    _pair(ref_chosen_logps, ref_rejected_logps, ("ref_chosen_logps", "ref_rejected_logps"))
    _pair(policy_chosen_logps, ref_chosen_logps, ("policy_chosen_logps", "ref_chosen_logps"))
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = beta * (chosen_logratios - rejected_logratios)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return losses, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach()


def kl_regularized_optimum(ref_logprobs: Tensor, rewards: Tensor, beta: float) -> Tensor:
    """log pi* for pi*(y) = pi_ref(y) exp(r(y) / beta) / Z, the maximiser of E_pi[r] - beta KL(pi || pi_ref).

    ref_logprobs, rewards: (..., V), a reference distribution (log-probabilities) and a reward for
    each of its V outcomes. Returns the optimum's log-probabilities, (..., V). Solving for r gives
    r(y) = beta log(pi*(y) / pi_ref(y)) + beta log Z: DPO's implicit reward, up to a constant
    that cancels in the Bradley-Terry difference (Rafailov et al. 2023, eq. 4-5).
    """
    if ref_logprobs.shape != rewards.shape:
        raise ValueError(f"ref_logprobs {tuple(ref_logprobs.shape)} and rewards {tuple(rewards.shape)} must match")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return F.log_softmax(ref_logprobs + rewards / beta, dim=-1)
