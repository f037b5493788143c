"""BF16AdamW against torch's fp32 AdamW: where each bf16 weight lands, what rounding to nearest loses, resume."""

import pytest
import torch

from instructune.train.optim import CHUNK, BF16AdamW


def _bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just below and just above each fp32 value (equal where x is a bf16 value)."""
    bits = x.view(torch.int32)
    down = (bits & -65536).view(torch.float32)  # truncation: towards zero
    up = ((bits & -65536) + (bits & 0xFFFF != 0).to(torch.int32) * 65536).view(torch.float32)
    return torch.minimum(down, up), torch.maximum(down, up)


class TestBF16AdamW:
    def test_small_updates_survive_on_average_where_rounding_to_nearest_loses_them(self):
        # Adam's update is ~lr per step for a steady gradient; 1e-4 is under half a bf16 step at 1.0 (2**-8).
        weights = {name: torch.nn.Parameter(torch.ones(4096, dtype=dtype))
                   for name, dtype in (("fp32", torch.float32), ("nearest", torch.bfloat16), ("ours", torch.bfloat16))}
        optimizers = {"fp32": torch.optim.AdamW([weights["fp32"]], lr=1e-4, weight_decay=0.0),
                      "nearest": torch.optim.AdamW([weights["nearest"]], lr=1e-4, weight_decay=0.0),
                      "ours": BF16AdamW([weights["ours"]], lr=1e-4, compile=False)}
        for _ in range(100):
            for name, w in weights.items():
                w.grad = torch.ones_like(w)
                optimizers[name].step()
        reference = weights["fp32"].mean().item()
        assert reference == pytest.approx(0.99, abs=1e-4)
        assert weights["nearest"].float().mean().item() == 1.0  # every update rounded away
        assert weights["ours"].float().mean().item() == pytest.approx(reference, abs=3e-4)

    @pytest.mark.parametrize("compile", [False, True])
    def test_each_weight_lands_on_a_bf16_neighbour_of_fp32_adamw_and_errors_average_out(self, compile):
        torch.manual_seed(0)
        # Two parameters, one longer than a chunk, with weight decay and a few steps of state.
        shapes = [(CHUNK + 4097,), (300, 7)]
        start = [(torch.randn(s) * 0.05).to(torch.bfloat16) for s in shapes]
        grads = [[(torch.randn(s) * 1e-3).to(torch.bfloat16) for s in shapes] for _ in range(3)]
        ours = [torch.nn.Parameter(w.clone()) for w in start]
        optimizer = BF16AdamW(ours, lr=1e-3, weight_decay=0.1, compile=compile)
        for step_grads in grads[:2]:
            for w, g in zip(ours, step_grads):
                w.grad = g.clone()
            optimizer.step()
        # The reference takes the last step from our bf16 weights and moments, in fp32.
        reference = [torch.nn.Parameter(w.detach().float()) for w in ours]
        torch_adamw = torch.optim.AdamW(reference, lr=1e-3, weight_decay=0.1)
        for w, ref in zip(ours, reference):
            torch_adamw.state[ref] = {"step": torch.tensor(2.0), "exp_avg": optimizer.state[w]["exp_avg"].float(),
                                      "exp_avg_sq": optimizer.state[w]["exp_avg_sq"].float()}
        for w, ref, g in zip(ours, reference, grads[2]):
            w.grad, ref.grad = g.clone(), g.float()
        optimizer.step()
        torch_adamw.step()
        for w, ref in zip(ours, reference):
            exact = ref.detach()
            low, high = _bf16_neighbours(exact)
            ours_f = w.detach().float()
            off = ~((ours_f == low) | (ours_f == high))
            # inductor's fp32 arithmetic may differ from torch's in the last bit, which can cross a bf16 boundary
            assert off.float().mean() <= 1e-3
            step = high - low
            moved = step > 0
            up = (ours_f[moved] == high[moved]).float()
            probability = ((exact - low)[moved] / step[moved])
            # Rounded up about as often as the distance asks: unbiased, measured over the elements.
            assert (up.mean() - probability.mean()).abs() < 0.01
            assert (ours_f - exact).mean().abs() < 0.05 * step[moved].mean()

    def test_a_resumed_optimizer_rounds_as_the_unbroken_one(self):
        torch.manual_seed(1)
        start = (torch.randn(1000) * 0.05).to(torch.bfloat16)
        grads = [(torch.randn(1000) * 1e-3).to(torch.bfloat16) for _ in range(4)]

        def run(steps, w, optimizer):
            for g in steps:
                w.grad = g.clone()
                optimizer.step()

        unbroken = torch.nn.Parameter(start.clone())
        run(grads, unbroken, BF16AdamW([unbroken], lr=1e-3, compile=False))
        first = torch.nn.Parameter(start.clone())
        optimizer = BF16AdamW([first], lr=1e-3, compile=False)
        run(grads[:2], first, optimizer)
        resumed = torch.nn.Parameter(first.detach().clone())
        again = BF16AdamW([resumed], lr=1e-3, compile=False)
        again.load_state_dict(optimizer.state_dict())
        run(grads[2:], resumed, again)
        assert torch.equal(resumed, unbroken)
        assert again.state[resumed]["exp_avg"].dtype == torch.bfloat16

    def test_parameters_that_are_not_bf16_are_refused(self):
        with pytest.raises(TypeError, match="bf16 parameters; got torch.float32"):
            BF16AdamW([torch.nn.Parameter(torch.ones(3))])
