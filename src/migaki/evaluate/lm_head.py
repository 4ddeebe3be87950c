"""The LM head while generating: whether it runs apart from the model (`plain_head`, cast
once for autocast by `cast_once`), its products (`greedy_tokens` block by block, `head_logits`),
and greedy picks of a float32 head through an int8 screen (`ScreenedHead`), the same picks as
the float32 product with most of the work done in int8.

Why the screen: in float32, Gemma 3's head (262,144 x 640, 671 MB) is most of a decoding step;
every step reads all of it and multiplies it by every position. An int8 copy is a quarter of
the memory, and int8 products (`torch._int_mm`, oneDNN) do four times as many per
instruction, also on AVX2 CPUs without bf16 instructions, the ones that generate in float32.
An int8 product is not the float32 one, so it only screens: each approximate logit has a
proven bound on its error, and only the rows whose logit could still be the largest (a few
hundred of 262,144 on the quickstart's answers) are multiplied again in float32. The pick is
the argmax of those, first index on a tie, as `greedy_tokens` picks over the whole product.

The bound: with w a row, ŵ its int8 rounding times its block's scale, x a position's state and
x̃ its two-level int8 rounding (x̃ = s1·q1 + s2·q2, the second level rounding what the first
left, so large outlier channels cost no precision), x·w − x̃·ŵ = x·(w−ŵ) + (x−x̃)·ŵ, so by
Cauchy–Schwarz the error is at most ‖x‖·‖w−ŵ‖ + ‖x−x̃‖·‖ŵ‖, plus float rounding. torchao's
int8 layouts give the products but no error bound, which is what makes the pick exact, hence
this module.
"""

from __future__ import annotations

import functools
import logging
import weakref

import torch
import torch.nn.functional as F

from migaki.objectives import decoder

log = logging.getLogger(__name__)

SCREEN_MIN_ROWS = 32_768  # smaller heads are cheap in float32; the screen would not pay
_BLOCK_ROWS = 8192  # int8 rows per product, and rows that share one scale
_CHUNK_ROWS = 1024  # rows quantized at a time when the screen is built
# Float rounding of the int8 logits and of the float32 products the pick is compared with,
# relative to the largest |logit| a position can have (‖x‖ times the largest ‖w‖).
_ROUNDING = 1e-4


def plain_head(model) -> torch.nn.Linear | None:
    """The LM head when it is a plain linear layer whose output are the logits (no soft cap
    or scale in the model's forward, no hook on the layer: accelerate's offloading moves the
    weight in one, a user may change the logits in one), else None."""
    head = model.get_output_embeddings()
    config = decoder(model).config
    rescaled = any(
        getattr(config, key, None) not in (None, 1, 1.0)
        for key in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )
    hooked = bool(head._forward_hooks or head._forward_pre_hooks) or hasattr(head, "_hf_hook")
    plain = type(head) is torch.nn.Linear and not rescaled and not hooked
    return head if plain else None


def cast_once(head: torch.nn.Linear | None) -> torch.nn.Linear | None:
    """The head with its weight in the autocast dtype, cast once for the whole generation.

    Autocast casts a frozen weight again at every product (it caches only weights that
    require grad): for Gemma 3's head that is 671 MB read and 335 MB written per step. The
    products are the same, since autocast rounds the weight to the same dtype; the bias stays
    as it is, as autocast leaves the addition."""
    device = head.weight.device.type if head is not None else "cpu"
    if head is None or not torch.is_autocast_enabled(device):
        return head
    dtype = torch.get_autocast_dtype(device)
    if head.weight.dtype == dtype:
        return head
    cast = torch.nn.Linear(head.in_features, head.out_features, bias=False, device="meta")
    cast.weight = torch.nn.Parameter(head.weight.detach().to(dtype), requires_grad=False)
    cast.bias = head.bias
    return cast


_HEAD_ROWS = 4096  # LM-head rows per product in greedy_tokens on a CPU


def greedy_tokens(head: torch.nn.Linear, states: torch.Tensor) -> torch.Tensor:
    """argmax(head(states)) over the last dimension, the same first-index tie-break, without
    the whole (positions, vocab) logits ever being written.

    A plain head's product is weight @ states.T: with MKL on CPU, `F.linear` of a few rows
    against Gemma 3's (262k, 640) head took 3.5x as long for 3 rows and 1.6x for 32 (AMD EPYC,
    AVX2). On a CPU the head goes 4,096 vocabulary rows at a time, each block's maximum taken
    while it is in cache: for 32 positions the head and argmax took 100 ms instead of 148 + 25
    (argmax over 33 MB of logits). Positions are padded to a multiple of 8: 15 took 150 ms
    and 16 took 80 ms. On a GPU the product stays whole (one kernel instead of 64)."""
    shape = states.shape[:-1]
    flat = states.reshape(-1, states.shape[-1]).to(head.weight.dtype)
    count = flat.shape[0]
    right = F.pad(flat, (0, 0, 0, -count % 8)).T  # (dim, positions padded)
    vocab = head.weight.shape[0]
    step = _HEAD_ROWS if head.weight.device.type == "cpu" else vocab
    best = index = None
    for start in range(0, vocab, step):
        logits = head.weight[start : start + step] @ right  # (block, positions)
        if head.bias is not None:
            logits = logits + head.bias[start : start + step, None]
        where = logits.argmax(dim=0)
        values = logits.gather(0, where[None])[0]
        if best is None:
            best, index = values, where
        else:  # strictly greater: an earlier block keeps a tie, as one argmax would
            better = values > best
            best = torch.where(better, values, best)
            index = torch.where(better, where + start, index)
    return index[:count].reshape(shape)


def head_logits(head: torch.nn.Linear, states: torch.Tensor) -> torch.Tensor:
    """(rows, width, vocab) float32 logits of a plain head (weight @ states.T, see
    greedy_tokens for why not `F.linear`)."""
    flat = states.reshape(-1, states.shape[-1]).to(head.weight.dtype)
    logits = (head.weight @ flat.T).T
    logits = logits if head.bias is None else logits + head.bias
    return logits.reshape(*states.shape[:2], -1).float()


class ScreenedHead:
    """A float32 `torch.nn.Linear` LM head without bias and an int8 copy of its weight."""

    @torch.no_grad()
    def __init__(self, head: torch.nn.Linear) -> None:
        weight = head.weight.detach()
        vocab = weight.shape[0]
        self.head = head
        # Rows sorted by their largest |weight|, so that one scale per block of rows loses
        # little: a block's logits are then one integer product times one number per position,
        # and the screen compares integers.
        largest, order = weight.abs().amax(dim=1).sort()
        self._ids = order  # sorted row -> vocabulary id
        self._quantized = torch.empty(weight.shape, dtype=torch.int8)
        starts = range(0, vocab, _BLOCK_ROWS)
        tiny = torch.finfo(torch.float32).tiny
        self._scale = torch.stack([largest[b : b + _BLOCK_ROWS].max() for b in starts])
        self._scale = self._scale.clamp_min(tiny) / 127
        errors, norms = torch.empty(vocab), torch.empty(vocab)
        for start in range(0, vocab, _CHUNK_ROWS):  # a chunk stays in cache through all this
            rows = slice(start, start + _CHUNK_ROWS)
            scale = self._scale[start // _BLOCK_ROWS]
            chunk = weight[order[rows]]
            codes = torch.round(chunk / scale)
            self._quantized[rows] = codes
            rounded = codes.mul_(scale)
            norms[rows] = rounded.norm(dim=1)
            errors[rows] = rounded.sub_(chunk).norm(dim=1)
        self._error = torch.stack([errors[b : b + _BLOCK_ROWS].max() for b in starts])
        self._norm = torch.stack([norms[b : b + _BLOCK_ROWS].max() for b in starts])
        self._largest_norm = float(self._norm.max())
        self._levels = levels_for(weight.shape[1])
        self.fallbacks = 0  # steps the screen could not settle (picked in float32 instead)

    @torch.no_grad()
    def greedy(self, states: torch.Tensor) -> torch.Tensor:
        """argmax(head(states)) over the last dimension, first index on a tie."""
        picks = self._screened(states.reshape(-1, states.shape[-1]).float())
        if picks is None:
            self.fallbacks += 1
            return greedy_tokens(self.head, states)
        return picks.reshape(states.shape[:-1])

    def _screened(self, x: torch.Tensor) -> torch.Tensor | None:
        """Picks for the (positions, dim) states, or None when the screen does not pay: a
        state that is not finite, or so many close rows that float32 does better alone."""
        if not bool(torch.isfinite(x).all()):
            return None
        count = x.shape[0]
        codes, unit, residual = _two_level(x, self._levels)
        length = x.norm(dim=1)
        slack = _ROUNDING * length * self._largest_norm
        # Logit ≈ integer * unit[position] * scale[block]; its error at most margin.
        units = unit[:, None] * self._scale  # (positions, blocks)
        margins = length[:, None] * self._error + residual[:, None] * self._norm + slack[:, None]
        integers = torch.empty(count, self._quantized.shape[0], dtype=torch.int32)
        floor = torch.full((count,), -torch.inf, dtype=torch.float64)
        starts = range(0, self._quantized.shape[0], _BLOCK_ROWS)
        for block, start in enumerate(starts):
            rows = slice(start, start + _BLOCK_ROWS)
            products = torch._int_mm(codes, self._quantized[rows].T)  # (2 * count, rows)
            block_integers = torch.add(
                products[count:], products[:count], alpha=self._levels, out=integers[:, rows]
            )
            largest = block_integers.amax(dim=1).double() * units[:, block]
            floor = torch.maximum(floor, largest - margins[:, block])
        # A row can be the largest only if its logit plus its bound reaches the floor: the
        # largest logit is at least any row's approximation minus that row's bound.
        positions, sorted_rows = [], []
        for block, start in enumerate(starts):
            lowest = ((floor - margins[:, block]) / units[:, block]).ceil()
            lowest = lowest.clamp(-(2**31), 2**31 - 1).to(torch.int32)
            close = integers[:, start : start + _BLOCK_ROWS] >= lowest[:, None]
            where = close.nonzero()
            positions.append(where[:, 0])
            sorted_rows.append(where[:, 1] + start)
        position = torch.cat(positions)
        union, slot = torch.unique(self._ids[torch.cat(sorted_rows)], return_inverse=True)
        if len(union) > len(self._ids) // 8:
            return None  # nearly flat logits: the blocked float32 product is cheaper
        exact = self.head.weight[union] @ x.T  # (union, positions); sorted: first index wins
        allowed = torch.zeros_like(exact, dtype=torch.bool)
        allowed[slot, position] = True
        return union[exact.masked_fill(~allowed, -torch.inf).argmax(dim=0)]


def levels_for(dim: int) -> int:
    """How much finer the second level of a state's codes is than the first: as fine as lets
    `high * levels + low` summed over `dim` products stay inside int32 (128 up to 1,036 wide,
    64 for 2,048, 16 for 8,192), 0 when even 2 does not."""
    levels = 128
    while levels >= 2 and 127 * dim * (127 * levels + levels // 2) > 2**31 - 1:
        levels //= 2
    return levels if levels >= 2 else 0


def _two_level(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 codes of x in two levels stacked as (2 * positions, dim), the value per position
    of one unit of `high * levels + low`, and ‖x − x̃‖ per position, x̃ what the codes stand
    for (the first level rounds x to 127 steps of its largest |value|, the second rounds what
    is left to steps `levels` times finer: |low| <= levels / 2)."""
    step = x.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    high = torch.round(x / step[:, None])
    fine = step / levels
    low = torch.round((x - high * step[:, None]) / fine[:, None])
    left = x - high * step[:, None] - low * fine[:, None]
    residual = left.norm(dim=1) * (1 + 1e-3) + 1e-6 * x.norm(dim=1)
    return torch.cat([high, low]).to(torch.int8), fine.double(), residual


@functools.cache
def exact_int8_products() -> bool:
    """Whether `torch._int_mm` on this CPU gives exact int32 sums, tried where they are
    hardest: every code ±127. On AVX2 without VNNI, oneDNN sums pairs of u8·s8 products in
    int16 with saturation (what fbgemm's `reduce_range` is for), so a sum can be off by
    millions; the screen's bound would then not hold, and the head runs in float32 there
    (where int8 was no faster anyway: 8.5 s against 8.7 on the quickstart's answers)."""
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (64 + 4096, 640), generator=generator) * 2 - 1
    codes = (signs * 127).to(torch.int8)
    states, rows = codes[:64], codes[64:]
    try:
        products = torch._int_mm(states, rows.T)
    except (RuntimeError, AttributeError):  # an older torch without int8 products on a CPU
        log.info("no int8 matrix products here: the LM head picks in float32")
        return False
    exact = torch.equal(products.long(), states.long() @ rows.long().T)
    if not exact:
        log.info("int8 matrix products here are not exact (AVX2 without VNNI?): float32 head")
    return exact


_screens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def screen_for(head: torch.nn.Linear | None) -> ScreenedHead | None:
    """A screen for a float32 head on a CPU with at least SCREEN_MIN_ROWS rows, else None
    (bf16 heads are already cheap; a GPU does the float32 product fast enough)."""
    if head is None or head.bias is not None or head.weight.device.type != "cpu":
        return None
    if head.weight.dtype != torch.float32:
        return None
    if head.weight.shape[0] < SCREEN_MIN_ROWS or torch.is_autocast_enabled("cpu"):
        return None
    if not levels_for(head.weight.shape[1]):
        return None
    if not exact_int8_products():
        return None
    # Kept while the head lives and its weight is unchanged: evaluation and `compare`
    # generate with one model several times, and building costs two passes over the weight.
    key = (head.weight.data_ptr(), head.weight._version)
    kept = _screens.get(head)
    if kept is None or kept[0] != key:
        kept = _screens[head] = (key, ScreenedHead(head))
    return kept[1]
