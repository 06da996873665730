"""A network's layer table: torchsummary's, plus the functional calls it cannot see (from
`tracer`)."""

from __future__ import annotations

import contextlib
import copy
import io
import re

from torch import nn

from ..base import IMAGE_SHAPE, first_line
from ..models import count_parameters
from .tracer import trace


def summary_text(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> str:
    """torchsummary's table as a string (from a CPU copy), plus the functional spatial calls it
    cannot show.

    torchsummary hooks modules only, so an F.max_pool2d in forward is missing from its table (and
    its shapes seem to jump); those calls are listed under it. If torchsummary fails, one line says
    so.
    """
    from torchsummary import summary

    # one line when the forward fails or gives no (N, 10) scores
    tr = trace(model, input_size, scores=True)
    buf = io.StringIO()
    try:
        net = copy.deepcopy(model).cpu().float().eval()
        with contextlib.redirect_stdout(buf):
            summary(net, input_size, device="cpu")
        text = buf.getvalue()
    except Exception as e:  # e.g. a forward returning a tuple, or a network without parameters
        text = (
            f"(torchsummary cannot tabulate this network: {type(e).__name__}:"
            f" {first_line(e, 1000)}; the receptive-field table lists its spatial layers)\n"
        )
    shown = re.search(r"^Total params: ([\d,]+)$", text, re.M)
    count = count_parameters(model)
    if shown and int(shown.group(1).replace(",", "")) != count:
        text += (
            f"Total params above: torchsummary counts a layer once per call and misses parameters"
            f" held outside layers; the network has {count:,} parameters, each counted once\n"
        )
    hidden = [r for r in tr.rows if r.functional]
    if hidden:
        text += "not shown above (functional calls, which torchsummary cannot see):\n" + "".join(
            f"  {r.kind} in {r.name} -> {list(r.out_shape[1:])}\n" for r in hidden
        )
    return text
