"""The XIL method zoo: RRR-G, RBR, HINT, CDEP penalties and confounder transplants."""

import json

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.func import functional_call, grad
from torchvision import transforms

from helpers import TINY, job_config
from xilsweep.correction import UserCorrectedDataset
from xilsweep.errors import SettingError
from xilsweep.gradcam import gradcam, placed
from xilsweep.job import resolved_settings
from xilsweep.losses import Batch
from xilsweep.losses.baseline import Balanced
from xilsweep.losses.cdep import CDEP, cdep_penalty, contextual_decomposition
from xilsweep.losses.hint import HINT, hint_penalty, ink
from xilsweep.losses.rbr import RBR, influence_penalty
from xilsweep.losses.rrr_g import RRRG, gradcam_penalty
from xilsweep.models import MLP, ConvNet
from xilsweep.reasons import GradCAM
from xilsweep.resume import refusal


class TinyConv(nn.Module):
    """conv -> ReLU -> linear, small enough to write GradCAM out by hand."""

    def __init__(self, size: int, kernel: int, padding: int = 0, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, kernel, padding=padding)
        self.map_size = size + 2 * padding - kernel + 1
        self.fc = nn.Linear(2 * self.map_size**2, classes)

    @property
    def last_conv(self):
        return self.conv

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


def gradcam_by_hand(model: TinyConv, x, classes):
    """z = V relu(A) + c, so dz_c/dA = V_c * [A > 0]; GradCAM = sum_k mean(dz_c/dA_k) A_k."""
    a = F.conv2d(x, model.conv.weight, model.conv.bias, padding=model.conv.padding).detach()
    v = model.fc.weight.detach().view(-1, 2, model.map_size, model.map_size)[classes]
    alpha = (v * (a > 0)).mean(dim=(2, 3), keepdim=True)
    return (alpha * a).sum(1, keepdim=True)


def batch(size: int, n: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    mask = torch.rand(n, 1, size, size, generator=g) < 0.3
    mask[0] = False  # a sample without feedback
    return x, torch.tensor([0, 1, 2, 0, 1])[:n], mask


# --- the XIL typology's GradCAM penalties, written independently with captum and torchvision ---


def typology_min_max(saliencies):
    """The typology's ``norm_saliencies_fast``: in place, min subtracted, divided by max + 1e-6."""
    a = saliencies.clone().view(len(saliencies), -1)
    a -= a.min(1, keepdim=True)[0]
    a /= a.max(1, keepdim=True)[0] + 1e-6
    return a.view(saliencies.shape)


def typology_rrr_g(model, x, mask):
    """``RRRGradCamLoss.forward`` (reduction sum, divided by the batch): captum's unrectified
    GradCAM of the predicted class, min-max scaled, the mask shrunk by ``transforms.Resize``."""
    logits = model(x)
    saliencies = LayerGradCam(model, model.last_conv).attribute(x, target=logits.argmax(1), relu_attributions=False)
    norm = typology_min_max(saliencies)
    expl = transforms.Resize(tuple(norm.shape[-2:]))(mask.float())
    return (expl * norm).pow(2).sum() / len(x)


def typology_hint(model, x, y, relevant, has_feedback):
    """``HINTLoss.forward`` with ``upsample=True`` (as the typology's learner builds it), reduction
    sum over the samples with feedback, divided by the batch: captum's unrectified GradCAM of the
    true class, min-max scaled, then captum's interpolation to the input."""
    saliencies = LayerGradCam(model, model.last_conv).attribute(x, target=y, relu_attributions=False)
    up = LayerAttribution.interpolate(typology_min_max(saliencies), tuple(x.shape[-2:]))
    per_pixel = F.mse_loss(up, relevant.float(), reduction="none")
    return (per_pixel * has_feedback.view(-1, 1, 1, 1)).sum() / len(x)


def parameter_gradient(model, value):
    model.zero_grad()
    value.backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])


def dotted_eights(data, n=6):
    """Training 8s with their dots (the confounder lies on background: the ink is the original's)."""
    has_dots = data.train.mask.flatten(1).any(1)
    chosen = torch.nonzero(has_dots).flatten()[:n]
    return data.train.x[chosen], data.train.labels[chosen], data.train.mask[chosen]


@pytest.mark.parametrize(
    "make_model", [ConvNet, lambda **data: ConvNet(channels=[6, 16], kernel_size=5, pool=[True, True], **data)]
)
def test_rrr_g_penalty_and_its_gradient_are_the_typology_code_s(make_model, digits):
    data = digits
    x, _, mask = dotted_eights(data)
    x, mask[0] = x.double(), False  # in double precision, one sample without feedback
    torch.manual_seed(0)
    model = make_model(**data.model_inputs()).double()
    logits, penalty = gradcam_penalty(model, x, mask)
    expected = typology_rrr_g(model, x, mask)
    assert expected > 0 and penalty.item() == pytest.approx(expected.item(), rel=1e-10)
    assert torch.allclose(logits, model(x))
    ours, theirs = parameter_gradient(model, penalty), parameter_gradient(model, typology_rrr_g(model, x, mask))
    assert theirs.abs().sum() > 0 and torch.allclose(ours, theirs, rtol=1e-8, atol=1e-12)
    x, model = x.float(), model.float()

    method, mixed = RRRG(lam=3.0), Batch(x, data.train.targets[:6], torch.tensor([False] * 4 + [True] * 2), mask)
    logits, total, losses = method.objective(model, mixed)
    base = Balanced(1.0).objective(lambda _: logits, mixed)[1]
    assert total.item() == pytest.approx(base.item() + 3.0 * penalty.item(), rel=1e-5)
    assert losses["RRR-G/penalty"].item() == pytest.approx(penalty.item()) and method.hparams()["lam"] == 3.0


@pytest.mark.parametrize("method", [RRRG(), HINT()])
def test_gradcam_methods_refuse_a_model_without_a_convolution(method):
    x, targets, mask = batch(28, n=2)
    with pytest.raises(SettingError) as err:
        method.objective(MLP(), Batch(x, targets, torch.tensor([False, True]), mask))
    assert err.value.key == "model" and "convolution" in str(err.value)


def test_hint_penalty_and_its_gradient_are_the_typology_code_s(digits):
    data = digits
    x, labels, mask = dotted_eights(data)
    mask[0] = False  # a sample without feedback
    has_feedback = mask.flatten(1).any(1)
    # the typology's relevant region: the original image's pixels above 1/255 (in any channel),
    # here the digit before its dots were pasted in (found from the clean image, not from the mask)
    original = torch.where(mask, torch.zeros_like(x), x)
    relevant = ((original * 255).round() > 1).any(1, keepdim=True)
    torch.manual_seed(0)
    model, method = ConvNet(**data.model_inputs()).double(), HINT(lam=2.0)
    logits, penalty = hint_penalty(model, x.double(), labels, mask, ink(x, mask, method.ink_threshold))
    expected = typology_hint(model, x.double(), labels, relevant, has_feedback)
    assert expected > 0 and penalty.item() == pytest.approx(expected.item(), rel=1e-10)
    ours = parameter_gradient(model, penalty)
    theirs = parameter_gradient(model, typology_hint(model, x.double(), labels, relevant, has_feedback))
    assert theirs.abs().sum() > 0 and torch.allclose(ours, theirs, rtol=1e-8, atol=1e-12)
    model = model.float()

    logits, total, losses = method.objective(model, Batch(x, labels, torch.zeros(6, dtype=torch.bool), mask))
    assert total.item() == pytest.approx(F.cross_entropy(logits, labels).item() + 2.0 * penalty.item(), rel=1e-5)
    assert set(losses) == {"total", "confounded", "corrected", "HINT/penalty"}
    assert method.hparams()["relevant_region"] == "ink" and method.hparams()["ink_threshold"] == 1 / 255
    with pytest.raises(SettingError) as err:
        HINT(relevant_region="not_the_mask")
    assert err.value.key == "relevant_region"


def test_one_gradcam_serves_the_explainer_and_the_penalties(data):
    """The explainer's maps are the penalties' maps, rectified and placed on their receptive
    fields: captum's LayerGradCam gives the same maps on the layer."""
    x, labels, _ = dotted_eights(data)
    torch.manual_seed(0)
    model = ConvNet()
    _, maps = gradcam(model, x, labels)
    assert torch.allclose(maps, LayerGradCam(model, model.last_conv).attribute(x, target=labels), atol=1e-6)
    shown = GradCAM().attribute(model, x, labels)
    assert torch.allclose(shown, placed(model, F.relu(maps), (28, 28)), atol=1e-6)
    tiny, (x, classes, _) = TinyConv(size=8, kernel=5), batch(8)
    assert torch.allclose(gradcam(tiny, x, classes)[1], gradcam_by_hand(tiny, x, classes), atol=1e-6)


# --- RBR --------------------------------------------------------------------


def test_rbr_penalty_matches_a_per_sample_functional_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 4), nn.Tanh(), nn.Linear(4, 3))
    x, targets, mask = batch(3)
    _, penalty = influence_penalty(model, x, targets, mask)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def summed_param_grad(xi, yi):
        # the typology's RBRLoss differentiates the batch's mean cross-entropy: each sample's share is 1/B
        grads = grad(lambda p: F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None]) / len(x))(params)
        return sum(g.sum() for g in grads.values())

    def summed_log_probs(xi):
        return F.log_softmax(functional_call(model, params, (xi[None],)), dim=1).sum()

    expected = sum(
        (grad(summed_param_grad)(xi, yi) * grad(summed_log_probs)(xi) * mi).pow(2).sum()
        for xi, yi, mi in zip(x, targets, mask, strict=True)
    ) / len(x)
    assert expected > 0
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-4)
    penalty.backward()
    assert model[1].weight.grad.abs().sum() > 0


def test_rbr_penalty_vanishes_for_a_linear_softmax_model():
    # the summed gradient of softmax cross-entropy over a last linear layer is sum_c (p_c - y_c)(1 + sum x) = 0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 3))
    x, targets, mask = batch(3)
    method = RBR(lam=10.0)
    logits, total, losses = method.objective(model, Batch(x, targets, torch.zeros(5, dtype=torch.bool), mask))
    assert losses["RBR/penalty"].item() == pytest.approx(0.0, abs=1e-12)
    assert total.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)


# --- CDEP -------------------------------------------------------------------


def reference_cd(model, x, mask):
    """Contextual decomposition by the rules of the CDEP code (``cd.py``: ``propagate_conv_linear``,
    ``propagate_relu``, ``propagate_pooling``, ``propagate_independent``), written out
    independently: the marked region is the *relevant* part (``relevant = mask * im``), the
    input is the normalised image, the model in eval mode."""
    relevant, irrelevant = mask * model.layers()[0](x), (~mask) * model.layers()[0](x)
    for module in model.layers()[1:]:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if isinstance(module, nn.Linear):
                relevant, irrelevant = relevant.reshape(len(x), -1), irrelevant.reshape(len(x), -1)
            bias = module(torch.zeros(irrelevant.size(), dtype=x.dtype))
            rel, irrel = module(relevant) - bias, module(irrelevant) - bias
            prop_rel, prop_irrel = rel.abs() + 1e-20, irrel.abs() + 1e-20
            prop_sum = prop_rel + prop_irrel
            relevant, irrelevant = rel + prop_rel / prop_sum * bias, irrel + prop_irrel / prop_sum * bias
        elif isinstance(module, nn.ReLU):
            relevant, irrelevant = F.relu(relevant), F.relu(relevant + irrelevant) - F.relu(relevant)
        elif isinstance(module, nn.MaxPool2d):
            _, indices = F.max_pool2d(relevant + irrelevant, 2, 2, return_indices=True)
            kept = F.max_unpool2d(torch.ones_like(_), indices, 2, 2, output_size=relevant.shape[-2:])
            relevant, irrelevant = F.avg_pool2d(kept * relevant, 2) * 4, F.avg_pool2d(kept * irrelevant, 2) * 4
        elif isinstance(module, nn.Dropout):
            relevant, irrelevant = module(relevant), module(irrelevant)
    return relevant, irrelevant


@pytest.mark.parametrize(
    "make_model",
    [ConvNet, lambda **data: ConvNet(channels=[6, 16], kernel_size=5, pool=[True, True], dropout=0.5, **data), MLP],
    ids=["cnn", "pooled_cnn_with_dropout", "mlp"],
)
def test_contextual_decomposition_is_the_cdep_code_s_with_the_marked_region_relevant(make_model, digits):
    data = digits
    torch.manual_seed(0)
    model = make_model(**data.model_inputs()).double().eval()
    with torch.no_grad():  # biases well away from zero: the ReLU rule tells the two roles apart only then
        for module in model.layers():
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0.0, 0.5)
    x, _, mask = dotted_eights(data, n=8)
    x = x.double()
    rel, irrel = contextual_decomposition(model, x, mask)
    expected_rel, expected_irrel = reference_cd(model, x, mask)
    scale = expected_rel.abs().max().item()
    assert scale > 1e-3 and (expected_rel - expected_irrel).abs().max() > 1e-3
    assert (rel - expected_rel).abs().max() <= 1e-10 * scale
    assert (irrel - expected_irrel).abs().max() <= 1e-10 * expected_irrel.abs().max()
    assert (rel + irrel - model(x)).abs().max() <= 1e-10 * model(x).abs().max()
    # the CDEP penalty: the reference's softmax(stack(rel, irrel))[:, 0].mean() over the samples with feedback
    mask[:3] = False
    rel, irrel = reference_cd(model, x, mask)
    share = F.softmax(torch.stack((rel[3:].reshape(-1), irrel[3:].reshape(-1)), dim=1), dim=1)[:, 0].mean()
    logits, penalty = cdep_penalty(model, x, mask)
    assert penalty.item() == pytest.approx(share.item() * 5 / 8, rel=1e-10)
    assert (logits - model(x)).abs().max() <= 1e-10 * logits.abs().max()


def test_contextual_decomposition_in_training_mode_drops_the_same_units_of_both_parts(data):
    torch.manual_seed(0)
    model = ConvNet(channels=[4, 8], pool=[False, True], dropout=0.5)
    x, _, mask = dotted_eights(data, n=8)
    torch.manual_seed(0)
    rel, irrel = contextual_decomposition(model, x, mask)
    torch.manual_seed(0)
    assert torch.allclose(rel + irrel, model(x), atol=1e-4)


class TinyLinear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(9, 3)

    def layers(self):
        return [nn.Flatten(), self.fc]

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_cdep_refuses_a_model_without_layers():
    x, targets, mask = batch(3)
    method, unmixed = CDEP(lam=5.0), Batch(x, targets, torch.zeros(5, dtype=torch.bool), mask)
    _, _, losses = method.objective(TinyLinear(), unmixed)
    assert 0 < losses["CDEP/penalty"].item() < 1
    with pytest.raises(SettingError) as err:
        method.objective(TinyConv(6, 3), unmixed)
    assert err.value.key == "model" and "a plain stack of layers" in str(err.value)


@pytest.mark.parametrize("method_type", [RRRG, RBR, HINT, CDEP])
def test_zoo_methods_round_trip_their_state_and_check_base(method_type):
    method = method_type(lam=2.0, base="imbalanced")
    method_type().load_state_dict(method.state_dict())
    assert (method.hparams()["lam"], method.hparams()["base"]) == (2.0, "imbalanced")
    assert "base_lam" not in method.hparams() and method_type(base_lam=3.0).hparams()["base_lam"] == 3.0
    for key, value in (("base", "weighted"), ("base_lam", -1.0)):
        with pytest.raises(SettingError) as err:
            method_type(**{key: value})
        assert err.value.key == key


# --- confounder transplant --------------------------------------------------


def test_transplant_pastes_pool_confounders_onto_other_class_images_keeping_their_labels(data):
    pool = UserCorrectedDataset(data.train, pool_size=20, correction="transplant", seed=0)
    donors, made = pool.original, pool.corrected
    assert (made.labels != donors.labels).all()
    assert torch.equal(made.mask, donors.mask) and torch.equal(made.x[made.mask], donors.x[donors.mask])
    # outside the pasted pixels each counterexample is a training image of its own label
    outside = (~made.mask).float()
    same = ((made.x * outside)[:, None] == (data.train.x[None] * outside[:, None])).flatten(2).all(2)  # [20, N]
    host = same.float().argmax(1)
    assert same.any(1).all() and torch.equal(data.train.labels[host], made.labels)
    assert len(host.unique()) == 20
    assert (made.x != data.train.x[host]).flatten(1).any(1).all()  # the dots changed every host
    # deterministic given the seed; another seed, other hosts
    again = UserCorrectedDataset(data.train, pool_size=20, correction="transplant", seed=0).corrected
    assert torch.equal(again.x, made.x) and torch.equal(again.targets, made.targets)
    other = UserCorrectedDataset(data.train, pool_size=20, correction="transplant", seed=1).corrected
    assert not torch.equal(other.x, made.x)
    with pytest.raises(SettingError) as err:
        UserCorrectedDataset(data.train, pool_size=20, correction="paste")
    assert err.value.key == "correction"


# --- end to end -------------------------------------------------------------


def test_zoo_jobs_run_end_to_end_with_finite_penalties(xilsweep_cli, data_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = xilsweep_cli(
        [
            "-m",
            "loss=rrr_g,rbr,hint,cdep",
            *TINY,
            "save_model=false",
            f"data.root={data_root}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    tags = {"rrr_g": "RRR-G/penalty", "rbr": "RBR/penalty", "hint": "HINT/penalty", "cdep": "CDEP/penalty"}
    for job in jobs:
        record = json.loads((job / "metrics.json").read_text())
        tag = tags.pop(record["settings"]["loss"])
        assert record["status"] == "done"
        penalties = [h[tag] for h in record["history"][1:]]
        assert penalties and all(0 <= p < float("inf") for p in penalties)
        ea = EventAccumulator(str(job), size_guidance={"scalars": 0})
        ea.Reload()
        assert tag in ea.Tags()["scalars"]
    assert tags == {}


def test_transplant_job_runs_end_to_end(xilsweep_cli, data_root, tmp_path):
    out = tmp_path / "job"
    result = xilsweep_cli(
        ["pool.correction=transplant", *TINY, "save_model=false", f"data.root={data_root}", f"hydra.run.dir={out}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "done" and record["settings"]["correction"] == "transplant"


def test_a_job_recorded_under_an_earlier_revision_of_its_method_is_not_resumed(data_root, tmp_path):
    """A CDEP job killed before CDEP got the reference's roles must not be continued with them."""
    out = tmp_path / "job"
    cfg = job_config([*TINY, "loss=cdep", "trainer.resume=true"], data_root)
    record = {"status": "running", "config": resolved_settings(cfg), "pid": 1, "host": "elsewhere"}
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(record))
    assert "cdep computed by revision 1 there, 2 now" in refusal(cfg, out, record)
    assert refusal(cfg, out, {**record, "method_revision": CDEP.revision}) is None
