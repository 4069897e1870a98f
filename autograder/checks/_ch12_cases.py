"""The inputs of the chapter 12 checks (a helper module, not an assignment).

Each ``*_cases()`` returns ``(inputs, ...)`` tuples: ``inputs`` is the dict that feedback names,
the rest what the student's function receives. Random inputs come from
:func:`autograder.secret.hidden_torch_generator`, and are kept away from rounding boundaries
(:func:`autograder.checks._ch12_references.away_from_ties`); the tie cases are exact by construction.
"""

from __future__ import annotations

import torch

from autograder.checks import _ch12_references as ref
from autograder.secret import hidden_rng, hidden_torch_generator


def absmax_cases() -> list:
    """(inputs, x, scale or None)."""
    cases = []
    for seed, (shape, kind) in enumerate((((4, 8), "N(0, 1)"), ((300,), "N(0, 0.02), one outlier"),
                                          ((2, 3, 5), "N(0, 9), the largest |x| negative"), ((1,), "one value"))):
        g = hidden_torch_generator(seed, "ch12.absmax")
        x = torch.randn(shape, generator=g) * (3.0 if seed == 2 else 0.02 if seed == 1 else 1.0)
        if seed == 1:
            x[int(torch.randint(0, 300, (1,), generator=g))] = 1.5
        if seed == 2:
            x.view(-1)[7] = -(x.abs().max() + 1.0)
        cases.append(({"case": kind, "shape": shape, "seed": seed},
                      ref.away_from_ties(x, ref.absmax_scale(x)), None))
    g = hidden_torch_generator(4, "ch12.absmax")
    x = 3.0 * torch.randn(6, 10, generator=g)
    cases.append(({"case": "a calibrated scale of 0.01: |x| > 1.28 saturates", "shape": (6, 10), "seed": 4},
                  ref.away_from_ties(x, 0.01), 0.01))
    cases.append(({"case": "all zeros", "shape": (3, 4)}, torch.zeros(3, 4), None))
    ties = torch.tensor([k + 0.5 for k in range(-6, 6)] + [0.0, 200.0, -200.0, 127.5, -128.5]) * 0.25
    cases.append(({"case": "exact ties (x / scale = k + 0.5) and saturation, scale 0.25", "shape": (17,)}, ties, 0.25))
    ties = torch.tensor([127.0, -3.5, -2.5, -0.5, 0.5, 1.5, 2.5, 64.5, -126.5]) * 0.125
    cases.append(({"case": "exact ties with the computed scale 0.125", "shape": (9,)}, ties, None))
    return cases


def zeropoint_cases() -> list:
    """(inputs, x, dtype)."""
    cases = []
    kinds = (((5, 7), "uint8", "N(0, 1)"), ((40,), "int8", "N(0, 1)"),
             ((3, 33), "uint8", "all positive (ReLU outputs)"), ((8, 8), "int8", "all negative"),
             ((64,), "uint8", "skewed: exp(N(0, 1)) - 0.3"), ((2, 9), "int8", "all positive"))
    for seed, (shape, dtype, kind) in enumerate(kinds):
        for attempt in range(100):
            g = hidden_torch_generator(100 * attempt + seed, "ch12.zeropoint")
            z = torch.randn(shape, generator=g)
            x = {0: z, 1: z, 2: z.abs() + 0.5, 3: -z.abs() - 1.0, 4: z.exp() - 0.3, 5: 2 * z.abs() + 0.1}[seed]
            scale, zp = ref.affine_qparams(x, dtype)
            lo = min(float(x.min()), 0.0)
            v = lo / scale
            if abs(v - round(v)) < 0.5 - ref.MARGIN:  # the zero point itself is not a near-tie
                x = ref.away_from_ties(x, scale, zp)
                if ref.affine_qparams(x, dtype) == (scale, zp):
                    break
        cases.append(({"case": kind, "shape": shape, "dtype": dtype, "seed": seed}, x, dtype))
    cases.append(({"case": "a constant 3.0", "shape": (4,), "dtype": "uint8"}, torch.full((4,), 3.0), "uint8"))
    cases.append(({"case": "all zeros", "shape": (2, 3), "dtype": "uint8"}, torch.zeros(2, 3), "uint8"))
    cases.append(({"case": "all zeros", "shape": (5,), "dtype": "int8"}, torch.zeros(5), "int8"))
    # scale (58.5 + 5.25) / 255 = 0.25 exactly, zero point 21 (uint8) or -107 (int8): both odd
    ties = torch.tensor([-5.25, 58.5, 0.0] + [m + 0.5 for m in range(-21, 12, 3)]) * torch.tensor(1.0)
    ties[3:] *= 0.25
    for dtype in ("uint8", "int8"):
        cases.append(({"case": "exact ties, scale 0.25, an odd zero point", "shape": tuple(ties.shape),
                       "dtype": dtype}, ties.clone(), dtype))
    return cases


def dequantize_cases() -> list:
    """(inputs, q, scale, zero_point or None for the default)."""
    cases = []
    g = hidden_torch_generator(0, "ch12.dequantize")
    cases.append(({"case": "uint8 codes, zero point 128", "shape": (6, 9), "seed": 0},
                  torch.randint(0, 256, (6, 9), generator=g).to(torch.uint8), 0.05, 128))
    q = torch.randint(-128, 128, (40,), generator=g).to(torch.int8)
    q[:2] = torch.tensor([127, -128], dtype=torch.int8)
    cases.append(({"case": "int8 codes, zero point -3", "shape": (40,), "seed": 0}, q, 0.0173, -3))
    cases.append(({"case": "int8 codes, zero point 5", "shape": (40,), "seed": 0}, q.clone(), 0.0071, 5))
    cases.append(({"case": "absmax codes (default zero point)", "shape": (3, 5), "seed": 0},
                  torch.randint(-127, 128, (3, 5), generator=g).to(torch.int8), 0.031, None))
    cases.append(({"case": "a 0-d tensor scale", "shape": (8,), "seed": 0},
                  torch.randint(0, 256, (8,), generator=g).to(torch.uint8), torch.tensor(0.5), torch.tensor(200)))
    rows = torch.rand(4, 1, generator=g) * 0.1 + 0.01
    cases.append(({"case": "per row: scale and zero point (4, 1)", "shape": (4, 16), "seed": 0},
                  torch.randint(-128, 128, (4, 16), generator=g).to(torch.int8), rows,
                  torch.tensor([[0], [3], [-2], [10]])))
    return cases


def per_channel_cases() -> list:
    """(inputs, w, bits)."""
    cases = []
    for seed, (shape, bits, kind) in enumerate((((16, 32), 4, "N(0, 0.02)"), ((8, 8), 4, "square"),
                                                ((12, 40), 8, "8 bits"), ((5, 64), 2, "2 bits"),
                                                ((24, 48), 4, "outlier input channels"),
                                                ((6, 10), 4, "row 2 all zeros"))):
        if seed == 4:
            w = ref.weights_with_outliers(seed, "ch12.per_channel", *shape)
        else:
            w = 0.02 * torch.randn(shape, generator=hidden_torch_generator(seed, "ch12.per_channel"))
        if seed == 5:
            w[2] = 0.0
        cases.append(({"case": kind, "shape": shape, "bits": bits, "seed": seed},
                      ref.away_from_ties(w, ref.row_scales(w, bits)[:, None]), bits))
    ties = torch.tensor([[7.0, -6.5, -4.5, -0.5, 0.5, 1.5, 2.5, 3.5], [-7.0, 5.5, 4.5, 0.0, -1.5, -2.5, 6.5, 1.0]])
    cases.append(({"case": "exact ties, scales 0.125 and 0.5", "shape": (2, 8), "bits": 4},
                  ties * torch.tensor([[0.125], [0.5]]), 4))
    return cases


def groupwise_cases() -> list:
    """(inputs, w, group_size, bits)."""
    cases = []
    for seed, (shape, group, bits, kind) in enumerate((((8, 64), 16, 4, "N(0, 0.02)"),
                                                       ((16, 128), 32, 4, "outlier input channels"),
                                                       ((6, 96), 32, 8, "8 bits"), ((4, 12), 4, 3, "3 bits"),
                                                       ((32, 32), 8, 4, "square"),
                                                       ((5, 20), 20, 4, "one group per row"))):
        if seed == 1:
            w = ref.weights_with_outliers(seed, "ch12.groupwise", *shape)
        else:
            w = 0.02 * torch.randn(shape, generator=hidden_torch_generator(seed, "ch12.groupwise"))
        cases.append(({"case": kind, "shape": shape, "group_size": group, "bits": bits, "seed": seed},
                      ref.nudged_groups(w, group, bits), group, bits))
    ties = torch.tensor([[7.0, -6.5, -4.5, -0.5, 0.5, 1.5, 2.5, 3.5]]) * 0.125
    ties = torch.cat([ties, ties.flip(1) * 4.0], dim=1)
    cases.append(({"case": "exact ties, scales 0.125 and 0.5", "shape": (1, 16), "group_size": 8, "bits": 4},
                  ties, 8, 4))
    return cases


def nf4_cases() -> list:
    """(inputs, x, blocksize)."""
    cases = []
    for seed, (shape, blocksize, kind) in enumerate((((64,), 64, "N(0, 1)"), ((4, 64), 64, "N(0, 1)"),
                                                     ((3, 100), 64, "a last block of 44"),
                                                     ((1000,), 128, "heavy tails"), ((16, 32), 32, "blocksize 32"),
                                                     ((8, 64), 64, "outlier input channels"))):
        g = hidden_torch_generator(seed, "ch12.nf4")
        if seed == 5:
            x = ref.weights_with_outliers(seed, "ch12.nf4", *shape)
        else:
            x = torch.randn(shape, generator=g)
        if seed == 3:
            x = x / (torch.rand(shape, generator=g) + 0.05)
        cases.append(({"case": kind, "shape": shape, "blocksize": blocksize, "seed": seed},
                      ref.nf4_away_from_midpoints(x, blocksize), blocksize))
    x = torch.randn(192, generator=hidden_torch_generator(6, "ch12.nf4"))
    x[64:128] = 0.0
    cases.append(({"case": "a block of zeros", "shape": (192,), "blocksize": 64, "seed": 6},
                  ref.nf4_away_from_midpoints(x, 64), 64))
    return cases


def nf4_dequantize_cases() -> list:
    """(inputs, codes (n,) uint8, absmax, shape, blocksize)."""
    cases = []
    for seed, (shape, blocksize) in enumerate((((64,), 64), ((4, 64), 64), ((3, 100), 64), ((1000,), 128),
                                               ((16, 32), 32))):
        g = hidden_torch_generator(seed, "ch12.nf4_dequantize")
        n = int(torch.tensor(shape).prod())
        blocks = -(-n // blocksize)
        absmax = torch.rand(blocks, generator=g) * 3 + 0.1
        if seed == 1:
            absmax[2] = 0.0
        cases.append(({"shape": shape, "blocksize": blocksize, "seed": seed},
                      torch.randint(0, 16, (n,), generator=g).to(torch.uint8), absmax, shape, blocksize))
    return cases


def model_windows(tokens: torch.Tensor, visible: int, count: int) -> list[int]:
    """``count`` window starts, drawn from the course secret, in the tokens after the visible part."""
    rng = hidden_rng(0, "ch12.quantize_model.held_out")
    return sorted(int(s) for s in rng.choice(range(visible + 1, len(tokens) - 129), size=count, replace=False))
