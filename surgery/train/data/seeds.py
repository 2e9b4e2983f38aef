"""Generator seeds derived from ``(seed, salt, ...)``: one independent stream per purpose and epoch."""

from __future__ import annotations

import numpy as np

# Salts keep the (seed, epoch), (seed, val split), (seed, worker) and (seed, subset) streams apart.
EPOCH_SALT = 1
VAL_SALT = 2
STREAM_SALT = 3
SUBSET_SALT = 4


def mix_seed(*parts: int) -> int:
    """A 63-bit ``torch.Generator`` seed from integers; nearby tuples give unrelated seeds.

    numpy's SeedSequence hashes its entropy; negative parts are taken modulo 2**64.
    """
    entropy = [int(part) % 2**64 for part in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) & (2**63 - 1)
