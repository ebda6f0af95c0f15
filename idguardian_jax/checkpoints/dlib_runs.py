"""Bulk decoding of dlib's serialized integers and floats (numpy, vectorized), for
dlib_format.Reader.scan / ints / floats: the offsets of a run of consecutive integers
(`int_chain`, `lane_chain`) and dlib's float values of (mantissa, exponent) pairs (`dlib_floats`).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["int_chain", "lane_chain", "dlib_floats"]

# An integer takes 1 + (control & 0x0F) bytes, so consecutive integers sit on the chain
# p -> p + step[p], step[p] = 1 + min(data[p] & 0x0F, 8) in 1..9 (a bad control byte gets a step
# too; the decoder rejects it). Short runs walk the chain in Python. Long ones (lane_chain) cut the
# bytes into blocks and start, in all blocks at once, a lane at each of the 9 bytes where the chain
# can enter a block. A lane reaching a byte that another lane of its block reached first (or at the
# same step) merges into it: from there on they are one chain. Within a few dozen steps most blocks
# are down to one lane, which every entry leads to, so it walks on without checks. Then where each
# lane left its block tells, block after block, by which lane the chain enters; the chain is the
# bytes those lanes visited from where the chain joined them.
_WALK_MAX = 2048      # runs up to this many integers: walk in Python
_BLOCK = 2048         # bytes per block of lanes
_SETTLE = 32          # lane steps with merge checks before lone lanes walk on unchecked
_STEP = [1 + min(c & 0x0F, 8) for c in range(256)]  # an integer's length, by control byte


def lane_chain(steps: np.ndarray, block_len: int = _BLOCK) -> np.ndarray:
    """All offsets (int64, ascending) below W of the chain 0 -> steps[0] -> ..., with the lanes
    described above; steps: uint8 (W + 9,), W values 1..9 then 9 zeros."""
    size = len(steps) - 9
    n_blocks = -(-size // block_len)
    lane = np.arange(9 * n_blocks)
    block, entry = np.divmod(lane, 9)
    entry8 = entry.astype(np.int8)
    pos = block * block_len + entry                   # each lane's next byte
    start = pos.copy()
    end = np.minimum(block * block_len + block_len, size)  # the byte past its block
    leave = pos.copy()                                # where it left its block
    into = lane.copy()                                # the lane it merged into (itself: none)
    merge_at = np.zeros_like(lane)                    # the byte where it did
    owner = np.full(size, -1, np.int8)                # the entry of the first lane at each byte
    exited = np.zeros(n_blocks, bool)                 # blocks that a lane has left
    live = lane[pos < end]
    alone = live[:0]
    visited = []                                      # the bytes owned, step by step
    it = 0
    while live.size:
        p = pos[live]
        free = owner[p] < 0
        owner[p[free]] = entry8[live[free]]
        visited.append(p[free])
        first = owner[p]                              # the earlier or simultaneous lane here
        merged = first != entry8[live]
        into[live[merged]] = live[merged] - entry[live[merged]] + first[merged]
        merge_at[live[merged]] = p[merged]
        live, p = live[~merged], p[~merged] + steps[p[~merged]]
        pos[live] = p
        out = p >= end[live]
        leave[live[out]] = p[out]
        exited[block[live[out]]] = True
        live = live[~out]
        if it % _SETTLE == _SETTLE - 1:  # blocks down to one lane (none left unmerged) walk on
            solo = np.bincount(block[live], minlength=n_blocks)[block[live]] == 1
            solo &= ~exited[block[live]]
            alone, live = np.concatenate([alone, live[solo]]), live[~solo]
        it += 1
    # A lone lane (the others merged into it) is where every entry of its block leads, so all it
    # visits from here on is on the chain, in its block and past it: lone lanes walk on together,
    # 8 steps between checks, until each has left its block (at the chain's first byte past it).
    on = np.zeros(size + 9, bool)
    p, stop = pos[alone], end[alone]
    while p.size:
        for _ in range(8):
            on[p] = True
            p += steps[p]
        going = p < stop
        on[p[~going]] = True
        p, stop = p[going], stop[going]
    stop = end[alone]
    leave[alone] = stop + on[stop[:, None] + np.arange(9)].argmax(axis=1)
    root = into
    for _ in range(4):                                # merge paths have at most 8 hops
        root = root[root]
    exits = leave[root].tolist()
    first_lane = []                                   # the lane each block is entered by
    k = 0
    for b in range(n_blocks):
        first_lane.append(9 * b + k)
        if exits[9 * b + k] >= size:
            break
        k = exits[9 * b + k] - (b + 1) * block_len
    # Besides what lone lanes visited, the chain holds the bytes each lane on its way through a
    # block owned from where the chain joined it: the lane's start, or where the one before merged.
    joined = np.full(len(lane), size, np.int64)
    cur = np.array(first_lane, np.int64)
    at = start[cur]
    for _ in range(9):
        joined[cur] = at
        moving = into[cur] != cur
        if not moving.any():
            break
        cur, at = into[cur[moving]], merge_at[cur[moving]]
    seen = np.concatenate(visited or [lane[:0]])
    on[seen[seen >= joined[(seen // block_len) * 9 + owner[seen]]]] = True
    return np.flatnonzero(on[:size])


def int_chain(raw: np.ndarray, count: int) -> np.ndarray:
    """Offsets (int64 (n,), ascending) in raw (uint8 (W,)) of the first `count` integers from its
    offset 0, each taken to be 1 + (control & 0x0F) bytes long (at most 9: bad control bytes give
    wrong lengths, the caller rejects them); n < count where the chain leaves raw."""
    parts, n, x, size = [], 0, 0, len(raw)
    while n < count and x < size:
        need = count - n
        if need <= _WALK_MAX:
            b, q, got = raw[x:x + 9 * need].tolist(), 0, []
            while q < len(b) and len(got) < need:
                got.append(q)
                q += _STEP[b[q]]
            part = x + np.array(got, np.int64)
        else:  # a window of about the bytes needed (2..5 per integer in practice); more if short
            seg = raw[x:x + min(size - x, 3 * need + (1 << 16))]
            steps = np.zeros(len(seg) + 9, np.uint8)  # each integer's length, then 9 zeros
            np.bitwise_and(seg, 0x0F, out=steps[:len(seg)])
            np.minimum(steps, 8, out=steps)
            steps[:len(seg)] += 1
            part = lane_chain(steps)[:need]
            if x:
                part += x
        parts.append(part)
        n += len(part)
        x = int(part[-1]) + _STEP[raw[part[-1]]]
    return parts[0] if len(parts) == 1 else np.concatenate(parts or [np.zeros(0, np.int64)])


def dlib_floats(mantissa: np.ndarray, exponent: np.ndarray) -> np.ndarray | None:
    """float64 values (same shape) of int64 (mantissa, exponent) pairs, bit for bit as Reader.float
    makes them (numpy's int64 -> float64 cast rounds as float(int), its ldexp is C's, as
    math.ldexp's); None if Reader.float would raise for one (exponent out of range, overflow)."""
    if exponent.size == 0:
        return np.zeros(exponent.shape, np.float64)
    low, high = exponent.min(), exponent.max()
    if low < -32768 or high > 32002:
        return None
    special = exponent >= 32000 if high >= 32000 else None
    with np.errstate(over="ignore"):
        out = np.ldexp(mantissa.astype(np.float64),
                       exponent if special is None else np.where(special, 0, exponent))
    if special is not None:
        out[special] = 0.0
    if not (np.isfinite(out.min()) and np.isfinite(out.max())):
        return None  # math.ldexp raises OverflowError
    if special is not None:
        out[special] = np.array([math.inf, -math.inf, math.nan])[exponent[special] - 32000]
    return out
