"""One training update (the attack, AWP's offset, the loss and its gradient) on the eager or the
compiled model, and an epoch's totals kept on the device; docs/method.md, training."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from flatcli import runtime, weights
from flatcli.training import methods


def memory_format(net: nn.Module, device: torch.device, amp_dtype) -> torch.memory_format:
    """channels_last for a model with 2-d convolutions on CUDA, and in bf16 on any device (the
    layout tensor-core and oneDNN bf16 convolutions run in without transposes); else the
    default layout."""
    convs = any(isinstance(m, nn.Conv2d) for m in net.modules())
    wanted = device.type == "cuda" or amp_dtype is not None
    return torch.channels_last if convs and wanted else torch.contiguous_format


class Step:
    """The gradient of a method's training loss at one batch.

    Batches of `full` examples run through `torch.compile`d models when the compile `policy`
    (`flatcli.runtime`) says so; a shorter last batch of an epoch runs eagerly on the same
    weights. Compiled graphs thus keep one static shape (no recompile), and every example is
    trained on whatever the policy: results equal the eager ones up to float rounding."""

    def __init__(self, net, model, method, optimizer, amp_dtype, policy, device, full, awp):
        self.net, self.model, self.method, self.optimizer = net, model, method, optimizer
        self.amp_dtype, self.full = amp_dtype, full
        self.awp = awp  # (gamma, layers, mode) of `methods.awp_offset`
        self.fast_net = runtime.compiled(net, policy, device)
        self.compiled = self.fast_net is not net
        self.fast_model = self.fast_net if model is net else runtime.compiled(model, policy, device)

    def models(self, n: int) -> tuple[nn.Module, nn.Module]:
        """(attack model, loss model) for a batch of n examples: compiled ones for full batches."""
        return (self.fast_net, self.fast_model) if n == self.full else (self.net, self.model)

    def gradient(self, xb, yb, target, generator, awp: bool = False):
        """Leave the gradient of the loss at (xb, target) in `.grad` (AWP: at w + v); return
        (loss, logits, clean logits or None), detached. The attack (from `generator`, on xb's
        device) uses the true labels yb, the loss the possibly noisy `target`."""
        net, model = self.models(len(yb))
        x_adv = clean = None
        if self.method.attack is not None:
            self.net.eval()
            with torch.no_grad(), methods.autocast(xb.device, self.amp_dtype):
                clean = net(xb)
            x_adv = self.method.adversarial(net, xb, yb, generator)
            self.net.train()
        offset = None
        if awp:
            gamma, layers, mode = self.awp
            offset = methods.awp_offset(
                self.net, x_adv, target, gamma, self.amp_dtype, layers, mode
            )
        self.optimizer.zero_grad(set_to_none=True)
        with weights.perturbed(self.net, offset) if offset else contextlib.nullcontext():
            loss, logits = self.method.loss(model, xb, x_adv, target)
            loss.backward()
        return loss.detach(), logits.detach(), clean


class Tally:
    """An epoch's totals, accumulated on the device and read once, at the epoch's end: the loss
    sum, clean and robust correct counts (float64) and every step's loss (for the finite check).
    """

    def __init__(self, steps: int, device: torch.device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.losses = torch.zeros(steps, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, step: int, loss, logits, yb, clean) -> None:
        """Count batch `step`: its mean loss, and the logits (robust, or clean without an
        attack) and clean logits (None without an attack) against the true labels yb."""
        n = len(yb)
        right = (logits.argmax(1) == yb).sum()
        if clean is None:  # no attack: the logits are the clean ones
            clean_right, robust = right, torch.zeros_like(right)
        else:
            clean_right, robust = (clean.argmax(1) == yb).sum(), right
        self.sums += torch.stack([loss.double() * n, clean_right.double(), robust.double()])
        self.losses[step] = loss
        self.n += n

    def totals(self) -> torch.Tensor:
        """float64 [4 + steps] on the device, to sum over DDP ranks: loss sum, examples, clean
        correct, robust correct, then 1 for each step whose loss was not finite."""
        s = self.sums
        n = torch.full((1,), float(self.n), dtype=torch.float64, device=s.device)
        return torch.cat([s[:1], n, s[1:], (~torch.isfinite(self.losses)).double()])
