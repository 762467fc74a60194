"""Weight-only int8: a peer's linear layers keep int8 weights, one scale per output row.

`swarm peer --quantize int8` turns every `torch.nn.Linear` of each block (and GPT-2's
`Conv1D`, a linear layer that stores its weight transposed) into an `Int8Linear` as the block
loads (so a span that would not fit in bfloat16 loads one block at a time):
`weight ≈ int8 * scale`, the scale of a row its largest magnitude over 127. Activations stay
in the peer's dtype, bfloat16 or float16, and the product runs in PyTorch's int8-weight kernel
(`aten._weight_int8pack_mm`), which reads half the bytes of a bfloat16 weight: on a CPU a
one-token step is bound by those bytes. Its kernel for float32 activations is slower than a
float32 product, so float32 peers are refused. Two cases multiply by the dequantized weight
instead: a step of `DEQUANTIZE_FROM_ROWS` tokens or more (a long prompt), where one
dequantization costs less than the kernel's time, which grows with the rows, and a GPU
(PyTorch's CUDA kernel for it is a simple float32 one): there int8 weights save memory only
(not run on a GPU yet). The kernel has no backward: a forward with gradients (`span.backward`,
a kept forward) runs the same product in an autograd function whose backward multiplies by
the weight dequantized again, one layer at a time, so a graph holds activations only, never
a dequantized weight. The experts of a mixture (stacked tensors, not linear layers) keep the
peer's dtype.

What it costs in quality is what rounding each weight to 255 levels of its row costs: on
SmolLM2 in bfloat16, the KL divergence from float32 per token is 0.0040 with int8 weights
against 0.0009 without (`scripts/bench_int8.py`). The tests compare with the model whose
weights are the dequantized ones (`tests/peer/test_int8_weights.py`).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import InvalidRequestError

__all__ = ["INT8_DTYPES", "Int8Linear", "as_linear", "quantize_linears"]

INT8_DTYPES = (torch.bfloat16, torch.float16)  # the activations int8 weights run with
DEQUANTIZE_FROM_ROWS = 256  # tokens in a step from which the dequantized weight is faster


class Int8Linear(torch.nn.Module):
    """A linear layer with int8 weights and one scale per output row."""

    weight_int8: torch.Tensor  # [out, in]
    scale: torch.Tensor  # [out], in the activations' dtype
    bias: torch.Tensor | None

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float().contiguous()  # Conv1D's: a transposed view
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = linear.bias

    def dequantized(self) -> torch.Tensor:
        """The weight it multiplies by, in the activations' dtype."""
        return self.weight_int8.to(self.scale.dtype) * self.scale[:, None]

    def product(self, hidden: torch.Tensor) -> torch.Tensor:
        """The layer's output (see the module doc for the way)."""
        rows = hidden.reshape(-1, self.in_features)
        if rows.shape[0] >= DEQUANTIZE_FROM_ROWS or hidden.device.type != "cpu":
            return torch.nn.functional.linear(hidden, self.dequantized(), self.bias)
        output: torch.Tensor = torch.ops.aten._weight_int8pack_mm(
            rows, self.weight_int8, self.scale
        )
        output = output.reshape(*hidden.shape[:-1], self.out_features)
        return output + self.bias if self.bias is not None else output

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and hidden.requires_grad:
            output: torch.Tensor = _Int8Product.apply(hidden, self)  # type: ignore[no-untyped-call]
            return output
        return self.product(hidden)


class _Int8Product(torch.autograd.Function):
    """`Int8Linear.product` for a graph: its backward dequantizes the weight again, so the
    graph keeps nothing for it (the weight and bias take no gradient, so the input is not
    needed)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, layer: Int8Linear) -> torch.Tensor:
        ctx.layer = layer
        return layer.product(hidden)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output @ ctx.layer.dequantized(), None


def as_linear(module: torch.nn.Module) -> torch.nn.Linear | None:
    """`module` if it is a linear layer, GPT-2's `Conv1D` as the linear layer it is (the
    weight a view of its own), None otherwise."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return module
    if not isinstance(module, Conv1D):
        return None
    inputs, outputs = module.weight.shape
    linear = torch.nn.Linear(inputs, outputs, bias=False, device="meta")
    linear.weight = torch.nn.Parameter(module.weight.detach().t(), requires_grad=False)
    linear.bias = module.bias
    return linear


def quantize_linears(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Turn every linear layer inside `module` (`as_linear`) into an `Int8Linear`; returns
    how many."""
    if dtype not in INT8_DTYPES:
        raise InvalidRequestError(
            f"int8 weights run with bfloat16 or float16 activations, not {dtype} (--dtype)"
        )
    count = 0
    for name, child in list(module.named_children()):
        linear = as_linear(child)
        if linear is not None:
            setattr(module, name, Int8Linear(linear))
            count += 1
        else:
            count += quantize_linears(child, dtype)
    return count
