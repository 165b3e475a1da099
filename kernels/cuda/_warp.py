"""Warp-level primitives for the CUDA kernels: lane exchange (shuffles), an
inclusive prefix sum and a sum over the 32 lanes of a warp.

On a GPU these are ``cuda.shfl_*_sync`` with the full mask: every caller
runs them in warp-uniform control flow (all 32 lanes of the warp call
them the same number of times), which the full mask requires.

Numba's CUDA simulator has no warp shuffles.  Under
``NUMBA_ENABLE_CUDASIM=1`` the same names are Python functions with the
same semantics: each simulated warp (threads ``32w .. 32w+31`` of a block)
shares slots for its lanes and a ``threading.Barrier`` of its 32 threads;
a lane writes its value, the warp meets at the barrier, each lane reads
its source slot (two slot arrays in turn, so a slot is not overwritten
before every lane has read it).
That is exactly the warp-synchronous exchange of the hardware, so the
kernels run unchanged in the simulator; their block size must be a
multiple of 32 (every launch here is).
"""

from __future__ import annotations

import threading

from numba import config, cuda

WARP = 32
FULL_MASK = 0xFFFFFFFF

# A simulated lane waits at most this long for the rest of its warp: a
# kernel that breaks the warp-uniform rule fails instead of hanging.
_SIM_TIMEOUT_S = 60.0

if config.ENABLE_CUDASIM:  # pragma: no cover - exercised by tests/cuda_sim
    _lock = threading.Lock()

    def _warp():
        t = threading.current_thread()
        manager = t._manager  # the simulator's BlockManager of this block
        warp, lane = divmod(t.thread_id, WARP)
        with _lock:
            states = manager.__dict__.setdefault("_cmodel_warps", {})
            state = states.get(warp)
            if state is None:
                bx, by, bz = manager._block_dim
                if (bx * by * bz) % WARP:
                    raise RuntimeError(f"warp shuffles: expected a block size that is a multiple of {WARP}; found {bx * by * bz}")
                state = states[warp] = ([[None] * WARP, [None] * WARP], threading.Barrier(WARP, timeout=_SIM_TIMEOUT_S), [0] * WARP)
        return state, lane

    def _exchange(value, source):
        (slots, barrier, phase), lane = _warp()
        # Two slot arrays used in turn: a lane writes array p again only
        # after the next barrier, which every lane reaches after reading p.
        p = phase[lane]
        phase[lane] = 1 - p
        slots[p][lane] = value
        barrier.wait()
        src = source(lane)
        return slots[p][src] if 0 <= src < WARP else value

    def shfl_up(value, delta):
        """``value`` of lane ``lane - delta`` (own value for the first lanes)."""
        return _exchange(value, lambda lane: lane - delta)

    def shfl_down(value, delta):
        """``value`` of lane ``lane + delta`` (own value for the last lanes)."""
        return _exchange(value, lambda lane: lane + delta)

    def shfl_idx(value, src):
        """``value`` of lane ``src``."""
        return _exchange(value, lambda lane: src)

else:

    @cuda.jit(device=True)
    def shfl_up(value, delta):
        return cuda.shfl_up_sync(FULL_MASK, value, delta)

    @cuda.jit(device=True)
    def shfl_down(value, delta):
        return cuda.shfl_down_sync(FULL_MASK, value, delta)

    @cuda.jit(device=True)
    def shfl_idx(value, src):
        return cuda.shfl_sync(FULL_MASK, value, src)


def _inclusive_scan_shfl(v, lane):
    """Sum of ``v`` over lanes ``0 .. lane`` (Kogge-Stone, 5 shuffles)."""
    d = 1
    while d < WARP:
        u = shfl_up(v, d)
        if lane >= d:
            v += u
        d *= 2
    return v


def _warp_sum_shfl(v):
    """Sum of ``v`` over the warp, valid in lane 0 (5 shuffles)."""
    d = WARP // 2
    while d > 0:
        v += shfl_down(v, d)
        d //= 2
    return v


if config.ENABLE_CUDASIM:  # pragma: no cover - exercised by tests/cuda_sim

    def _gather(value):
        """Every lane's ``value`` (one exchange)."""
        (slots, barrier, phase), lane = _warp()
        p = phase[lane]
        phase[lane] = 1 - p
        slots[p][lane] = value
        barrier.wait()
        return list(slots[p]), lane

    # One exchange instead of five shuffles: each simulated exchange costs
    # two waits of 32 Python threads.  tests/cuda_sim checks that the
    # shuffle versions above agree with these.
    def inclusive_scan(v, lane):
        """Sum of ``v`` over lanes ``0 .. lane``."""
        got, me = _gather(v)
        return sum(got[1 : me + 1], got[0])

    def warp_sum(v):
        """Sum of ``v`` over the warp, in lane order of the shuffle tree (valid in lane 0)."""
        got, _ = _gather(v)
        return _tree_sum(got)

    def _tree_sum(vals):
        # The order shfl_down(16, 8, 4, 2, 1) adds in, so float results match.
        d = WARP // 2
        vals = list(vals)
        while d > 0:
            vals = [vals[i] + vals[i + d] if i + d < WARP else vals[i] + vals[i] for i in range(WARP)]
            d //= 2
        return vals[0]

    _inclusive_scan_shfl = cuda.jit(device=True)(_inclusive_scan_shfl)
    _warp_sum_shfl = cuda.jit(device=True)(_warp_sum_shfl)

else:
    inclusive_scan = cuda.jit(device=True)(_inclusive_scan_shfl)
    warp_sum = cuda.jit(device=True)(_warp_sum_shfl)
