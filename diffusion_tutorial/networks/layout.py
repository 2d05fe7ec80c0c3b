"""The layers of a U-Net in the order its forward pass runs them: shapes, parameters, skips.

What :func:`diffusion_tutorial.plotting.plot_unet` draws, read from the model object (one forward
pass with hooks), so that the figure stays true for any :class:`~diffusion_tutorial.networks.unet.UNetConfig`.
Book: Example: DDPM (Part 2; the U-Net).
"""

from __future__ import annotations

import dataclasses

import torch

from diffusion_tutorial.networks.unet import ResBlock, SelfAttention, UNet

__all__ = ["UNetLayer", "unet_layers"]


@dataclasses.dataclass
class UNetLayer:
    """One step of a :class:`~diffusion_tutorial.networks.unet.UNet`'s forward pass, as observed.

    ``path`` is "in", "down", "mid", "up", "out" or "emb" (the time MLP and the label table, which
    run beside the image path); ``kind`` "conv", "res", "res+attn", "attn", "downsample",
    "upsample", "out", "time" or "label"; ``c_in``/``c_out`` channels and ``size`` the output's H
    (= W), all read from tensors of one forward pass (None for the "emb" rows); ``params`` the
    trainable parameters of the module; ``skip`` the index of the layer whose output is
    concatenated to this layer's input (up-path blocks), else None.
    """

    name: str
    path: str
    kind: str
    c_in: int | None
    c_out: int | None
    size: int | None
    params: int
    emb: bool = False
    skip: int | None = None


def unet_layers(model: torch.nn.Module) -> list[UNetLayer]:
    """Walk a ``UNet``'s modules in the order of its forward pass and record each layer's shapes.

    One forward pass on a zero image at t = 1 (under ``no_grad``, in eval mode, restored after)
    with hooks on every layer gives the channels and resolutions; the skip connections follow
    the forward pass's stack (the input layer and every down-path output are pushed, every
    up-path block pops one). The rows' ``params`` add up to ``model.num_parameters()``.
    Book: Example: DDPM (Part 2; the U-Net).
    """
    if not isinstance(model, UNet):
        raise TypeError(f"model must be a diffusion_tutorial UNet, got {type(model).__name__}")

    def count(module: torch.nn.Module | None) -> int:
        if module is None:
            return 0
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    def kind(path: str, layer: torch.nn.Module) -> str:
        if isinstance(layer, torch.nn.ModuleList):
            return "res+attn"
        if isinstance(layer, ResBlock):
            return "res"
        if isinstance(layer, SelfAttention):
            return "attn"
        if isinstance(layer, torch.nn.Sequential):
            return "upsample"
        return "downsample" if path == "down" else "conv"

    steps = [("conv_in", "in", model.conv_in)]
    for path in ("down", "mid", "up"):
        steps += [(f"{path}.{i}", path, m) for i, m in enumerate(getattr(model, path))]
    shapes: dict[str, list] = {}

    def record_in(name: str):
        def hook(_module, args) -> None:  # returns None: the input is left as it is
            shapes[name] = [args[0].shape, None]

        return hook

    def record_out(name: str):
        def hook(_module, _args, out) -> None:
            shapes[name][1] = out.shape

        return hook

    hooks = []
    for name, _, layer in steps:
        is_pair = isinstance(layer, torch.nn.ModuleList)  # a residual block, then attention
        hooks.append((layer[0] if is_pair else layer).register_forward_pre_hook(record_in(name)))
        hooks.append((layer[-1] if is_pair else layer).register_forward_hook(record_out(name)))
    cfg, was_training = model.config, model.training
    weight = model.conv_in.weight
    x = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size, dtype=weight.dtype)
    try:
        model.eval()
        with torch.no_grad():
            model(x.to(weight.device), torch.ones(1, dtype=torch.long, device=weight.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    rows: list[UNetLayer] = []
    stack: list[int] = []
    for name, path, layer in steps:
        shape_in, shape_out = shapes[name]
        row = UNetLayer(
            name, path, kind(path, layer), shape_in[1], shape_out[1], shape_out[-1], count(layer)
        )
        row.emb = row.kind in ("res", "res+attn")
        if path == "up" and row.kind != "upsample":
            row.skip = stack.pop()  # the forward pass concatenates this output first
        rows.append(row)
        if path in ("in", "down"):
            stack.append(len(rows) - 1)
    size = cfg.image_size
    out_params = count(model.norm_out) + count(model.conv_out)
    rows.append(
        UNetLayer("conv_out", "out", "out", rows[-1].c_out, cfg.in_channels, size, out_params)
    )
    rows.append(UNetLayer("time_mlp", "emb", "time", None, None, None, count(model.time_mlp)))
    if model.class_emb is not None:
        rows.append(
            UNetLayer("class_emb", "emb", "label", None, None, None, count(model.class_emb))
        )
    return rows
