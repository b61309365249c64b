"""fp16 training with loss scaling, on the CPU: torch.amp.GradScaler("cpu") and CPU autocast run the
same code path a GPU without bf16 takes, so it is tested here rather than called CUDA-only.

What each test pins down: the loss is scaled for backward and the gradients unscaled before clipping
(the clip sees, and the optimizer gets, the true gradients); an overflowing step is skipped and the
scale backs off; the scale grows after a run of good steps; a resumed run continues with the scaler's
state. Tolerances: scaling by a power of two is exact in fp16, so scaled and unscaled backward differ
only where the unscaled one underflows (what scaling is for): 1e-4 relative on the gradient norm
(measured: 1.2e-5); the clipped gradients as a vector, 1e-3 relative (the unscaled run's small
gradients lose bits as fp16 subnormals).
"""
import json

import pytest
import torch
from safetensors import safe_open

import minift.train_loop
from minift import BertClassifier
from minift.train_step import make_loss_fn, make_optimizer, make_schedule, pick_precision, train_step
from safetensors.torch import load_file
from test_train import clf_data, interrupt_at, make_batches, no_dropout, run  # noqa: F401 (clf_data: a fixture)

CPU = torch.device("cpu")


def setup(tiny_dir, **scaler_args):
    net = no_dropout(BertClassifier.from_pretrained(tiny_dir))
    opt = make_optimizer(net, 1e-3, 0.01)
    sched = make_schedule(opt, 0, 100)
    scaler = torch.amp.GradScaler("cpu", **scaler_args) if scaler_args else None
    return net, opt, sched, scaler, make_loss_fn(net, torch.float16, CPU, compile=False)


def test_fp16_is_allowed_on_cpu():
    assert pick_precision("fp16", CPU) == torch.float16
    assert pick_precision("auto", CPU) != torch.float16  # slow without fp16 instructions: never chosen for you


def applied_grads(opt):
    """The gradients the fused AdamW kernel will use: .grad divided by grad_scale where train_step folds
    the clipping into the kernel (without a scaler)."""
    scale = getattr(opt, "grad_scale", None)
    return [p.grad.clone() if scale is None else p.grad / scale for g in opt.param_groups for p in g["params"]]


def test_scaled_step_clips_the_true_gradients(tiny_dir):
    """With a scale of 2^12 and clipping at 0.05: the returned norm is the unscaled gradients' norm
    (the same as a step without scaler), and the optimizer receives the same clipped gradients as
    without scaler, of norm exactly the clip (had clipping run before unscaling, it would get clip / 2^12)."""
    clip, seen, results = 0.05, {}, {}
    for name, kw in (("scaled", {"init_scale": 2.0 ** 12}), ("plain", {})):
        net, opt, sched, scaler, loss_fn = setup(tiny_dir, **kw)
        opt.register_step_pre_hook(lambda o, a, k, name=name: seen.__setitem__(name, applied_grads(o)))
        loss, norm, applied = train_step(loss_fn, opt, sched, scaler, make_batches(tiny_dir, seed=1), clip)
        assert applied
        results[name] = (loss.item(), norm.item())
        if scaler is not None:
            assert scaler.get_scale() == 2.0 ** 12  # one good step: no growth yet (interval 2000)
    (l_s, n_s), (l_p, n_p) = results["scaled"], results["plain"]
    assert l_s == pytest.approx(l_p, rel=1e-6)  # the reported loss is the unscaled one
    assert n_s == pytest.approx(n_p, rel=1e-4) and n_s > 3 * clip  # unscaled before the norm; clipping acts
    g_s, g_p = seen["scaled"], seen["plain"]
    for g in (g_s, g_p):
        assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g])).item() == \
            pytest.approx(clip, rel=1e-4)
    g_s, g_p = torch.cat([g.flatten() for g in g_s]), torch.cat([g.flatten() for g in g_p])
    rel = (torch.linalg.vector_norm(g_s - g_p) / torch.linalg.vector_norm(g_p)).item()
    print(f"clipped gradients, scaled vs unscaled: {rel:.2e} relative")
    assert rel < 1e-3


def test_overflow_skips_the_step_and_backs_off(tiny_dir):
    """A scale of 2^40 overflows fp16 in backward: nothing moves (weights, AdamW state, schedule) and the
    scale halves; the next steps, at 2^39 and lower, are applied once the scale fits."""
    net, opt, sched, scaler, loss_fn = setup(tiny_dir, init_scale=2.0 ** 40)
    before = [p.detach().clone() for p in net.parameters()]
    loss, norm, applied = train_step(loss_fn, opt, sched, scaler, make_batches(tiny_dir, seed=2), 1.0)
    assert not applied and not torch.isfinite(norm)
    assert torch.isfinite(loss)  # the loss itself was fine: only its scaled gradients overflowed
    assert scaler.get_scale() == 2.0 ** 39
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    # The fused AdamW takes the scaler's inf flag itself: it may create its state, but takes no step.
    assert all(st["step"] == 0 and not st["exp_avg"].any() for st in opt.state.values()) and sched.last_epoch == 0
    assert all(p.grad is None for p in net.parameters())
    for k in range(40):  # backs off by halves until a step fits
        if train_step(loss_fn, opt, sched, scaler, make_batches(tiny_dir, seed=2), 1.0)[2]:
            break
    assert 2.0 ** 10 <= scaler.get_scale() <= 2.0 ** 38 and sched.last_epoch == 1
    assert any(not torch.equal(p, b) for p, b in zip(net.parameters(), before))


def test_scale_grows_after_good_steps(tiny_dir):
    net, opt, sched, scaler, loss_fn = setup(tiny_dir, init_scale=2.0 ** 8, growth_interval=2)
    for k, want in enumerate((2.0 ** 8, 2.0 ** 9, 2.0 ** 9, 2.0 ** 10)):
        assert train_step(loss_fn, opt, sched, scaler, make_batches(tiny_dir, seed=k), 1.0)[2]
        assert scaler.get_scale() == want


def scaler_state(out):
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        return json.loads(f.metadata()["minift"])["scaler"]


def test_fp16_resume_continues_with_the_scalers_state(tiny_dir, clf_data, tmp_path, monkeypatch):
    """train(precision="fp16") on the CPU, interrupted at step 5 and resumed, ends where the
    uninterrupted run ends: the same weights and the same scaler state. The scale grows every 2 steps,
    so a resume that started the scaler afresh would end with another scale."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(minift.train_loop.torch.amp, "GradScaler", lambda dev: real(dev, init_scale=2.0 ** 8,
                                                                                   growth_interval=2))
    a, b = tmp_path / "a", tmp_path / "b"
    a_row = run(tiny_dir, clf_data, a, precision="fp16")
    with monkeypatch.context() as mp:
        interrupt_at(mp, 5)
        assert run(tiny_dir, clf_data, b, precision="fp16") == {"stopped_at": 5}
    assert scaler_state(b)["scale"] == 2.0 ** 10  # grown at steps 2 and 4
    assert run(tiny_dir, clf_data, b, precision="fp16", resume=True) == a_row
    assert scaler_state(a) == scaler_state(b) and scaler_state(a)["scale"] > 2.0 ** 10
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
