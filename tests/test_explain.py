"""Right for the right reasons: metric functions against hand computations,
explainers on briefly trained models, the per-epoch TensorBoard record, and
``python -m xilsweep.explain``."""

import json
import shutil

import pytest
import torch
from torchvision.io import ImageReadMode, read_image

from helpers import TINY, events, job_config, refusal, run_xilsweep
from xilsweep.data import CONFOUNDED_CLASS, ConfoundedMNIST08, Split
from xilsweep.errors import SettingError
from xilsweep.explain import (
    FORMATS,
    WRONG,
    Explained,
    attribution_colours,
    class_names,
    dotted_examples,
    draw,
    explain,
    run_config,
    shown_views,
)
from xilsweep.explain import main as explain_main
from xilsweep.job import ConfigError, assemble, build
from xilsweep.metrics import RELIANCE, attribution_in_mask, dot_flip_rate, normalise, wrong_reason_score
from xilsweep.models import MLP, ConvNet
from xilsweep.reasons import GradCAM, InputGradients, overlay, view_images
from xilsweep.training import Trainer, predict_logits, train_confounded

# Three 2x2 maps, flattened row by row: a map with structure, an all-zero map, and one with an offset.
MAPS = torch.tensor([[1.0, 3.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 6.0]]).view(3, 1, 2, 2)
MASKS = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool).view(3, 1, 2, 2)


def test_attribution_in_mask_is_the_share_of_positive_attribution_on_the_mask():
    shares = attribution_in_mask(MAPS, MASKS)
    # (1 + 4) / 8; the all-zero map counts 0; (2 + 2) / 12
    assert shares.tolist() == pytest.approx([5 / 8, 0.0, 4 / 12])
    # negative attribution is ignored: only the positive pixel (outside the mask) counts
    assert attribution_in_mask(torch.tensor([[-2.0, 2.0]]), torch.tensor([[True, False]])).item() == 0.0


def test_normalise_maps_each_map_to_0_1_and_leaves_constant_maps_at_zero():
    expected = torch.tensor([[0.25, 0.75, 0.0, 1.0], [0.0] * 4, [0.0, 0.0, 0.0, 1.0]])
    assert torch.allclose(normalise(MAPS).view(3, 4), expected)
    assert normalise(torch.full((1, 1, 2, 2), 3.0)).eq(0).all()


def test_wrong_reason_score_counts_active_mask_pixels_in_percent():
    # threshold 0.2: map 0 is active at pixels 0, 1, 3 -> both mask pixels (0, 3) -> 100 %;
    # map 2 is active only at pixel 3, outside its mask -> 0 %
    assert wrong_reason_score(MAPS, MASKS, 0.2).tolist() == pytest.approx([100.0, 0.0, 0.0])
    # "mean": the mean normalised value of the non-zero maps, (0.25 + 0.75 + 1 + 1) / 8 = 0.375,
    # so map 0 is active at pixels 1 and 3 -> one of its two mask pixels
    assert wrong_reason_score(MAPS, MASKS, "mean").tolist() == pytest.approx([50.0, 0.0, 0.0])
    assert wrong_reason_score(torch.zeros(2, 1, 2, 2), MASKS[:2], "mean").tolist() == [0.0, 0.0]


def test_dot_flip_rate_counts_correct_clean_predictions_that_dots_turn_into_the_confounded_class():
    labels = torch.tensor([0, 0, 0, 1])
    clean = torch.tensor([0, 0, 1, 1])  # image 2 is wrong without dots and image 3 is an 8: not counted
    dotted = torch.tensor([1, 0, 1, 1])
    assert dot_flip_rate(clean, dotted, labels, confounded_class=1) == 0.5
    assert dot_flip_rate(torch.ones(3, dtype=torch.long), dotted[:3], labels[:3], confounded_class=1) is None


def test_overlay_is_rgb_with_the_dimmed_digit_under_the_heat():
    x = torch.rand(2, 1, 4, 4)
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 1, 2], maps[0, 0, 3, 3] = 5.0, 2.5
    rgb = overlay(x, maps)
    assert rgb.shape == (2, 3, 4, 4)
    assert torch.equal(rgb[1], 0.5 * x[1].expand(3, -1, -1))  # all-zero map: the digit at half brightness
    assert rgb[0, :, 1, 2].tolist() == pytest.approx([1.0, 1.0, 0.0])  # the maximum: yellow
    gray = 0.5 * x[0, 0, 3, 3].item()
    assert rgb[0, :, 3, 3].tolist() == pytest.approx([0.5 * gray + 0.5, 0.5 * gray + 0.25, 0.5 * gray])


@pytest.fixture(scope="module")
def data(data_root):
    """08MNIST with the confounder of conf/data/mnist08.yaml (16 dots of 3x3): one
    the CNN does learn as a shortcut (the default Confounder's 4 dots of 2x2 it does not)."""
    return ConfoundedMNIST08(root=str(data_root), confounder={"n_dots": 16, "dot_size": 3}).load()


@pytest.fixture(scope="module")
def confounded_and_clean_models(data):
    """The same small CNN trained briefly on the confounded training split and
    on the same images with the dot pixels zeroed (no shortcut to learn)."""
    trainer = Trainer(device="cpu", num_threads=1)
    clean = Split(data.train.x.masked_fill(data.train.mask, 0.0), data.train.targets, data.train.mask)
    models = []
    for split in (data.train, clean):
        torch.manual_seed(0)
        model = ConvNet(channels=[16, 32], pool=[True, True], hidden=[64])
        train_confounded(model, split, trainer, epochs=2, lr=1e-3, batch_size=64, seed=0)
        models.append(model)
    return models


def test_a_confounded_model_flips_dotted_zeros_and_its_saliency_sits_on_the_dots(data, confounded_and_clean_models):
    confounded, clean = confounded_and_clean_models
    saliency = InputGradients(n_images=300)  # a share of the 974 dotted test 8s keeps the test quick
    before, after = (saliency.reasons(m, data, CONFOUNDED_CLASS) for m in (confounded, clean))
    assert before["dot_flip_rate"] > 0.6 and before["dot_flip_rate"] > after["dot_flip_rate"] + 0.3
    assert before["attribution_in_mask"] > after["attribution_in_mask"] + 0.05
    assert before["wrong_reason_score"] > after["wrong_reason_score"] + 10
    assert before["test_dotted_accuracy"] < after["test_dotted_accuracy"]
    # GradCAM explains the same images; its coarse maps give shares, percentages and the same flip rate
    cam = GradCAM(n_images=300).reasons(confounded, data, CONFOUNDED_CLASS)
    assert 0 < cam["attribution_in_mask"] < 1 and 0 < cam["wrong_reason_score"] <= 100
    assert cam["dot_flip_rate"] == before["dot_flip_rate"]
    # without a confounded class there is no flip rate, and dotted test images of every class are explained
    spread = saliency.reasons(confounded, data, None)
    assert spread["dot_flip_rate"] is None and spread["attribution_in_mask"] != before["attribution_in_mask"]


def test_explanations_are_batched_maps_of_the_input_size(data, confounded_and_clean_models):
    model = confounded_and_clean_models[0]
    x = data.test_dotted.x[:5]
    for explainer in (GradCAM(), InputGradients()):
        maps = explainer.attribute(model, x)
        assert maps.shape == x.shape and (maps >= 0).all() and maps.flatten(1).amax(1).gt(0).all()
    # the batch gives the same maps as the images one by one
    single = torch.cat([GradCAM().attribute(model, x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(GradCAM().attribute(model, x), single, atol=1e-5)


def test_gradcam_needs_a_convolution_and_input_gradients_explain_any_model(data, data_root):
    with pytest.raises(SettingError, match="explainer='gradcam' is not allowed: input_gradients"):
        GradCAM().check(MLP())
    assert InputGradients().attribute(MLP(), data.test.x[:3]).shape == (3, 1, 28, 28)
    with pytest.raises(ConfigError, match="explainer='gradcam' is not allowed: input_gradients"):
        assemble(job_config([*TINY, "model=mlp", "explainer=gradcam"], data_root))
    cfg = job_config([*TINY, "model=mlp", "explainer=input_gradients"], data_root)
    build(cfg, "explainer").check(build(cfg, "model"))


@pytest.mark.parametrize(
    "override,message",
    [
        ("explainer.threshold=2", "explainer.threshold=2 is not allowed: mean"),
        ("explainer.threshold=median", "explainer.threshold='median' is not allowed"),
        ("explainer.n_images=0", "explainer.n_images=0 is not allowed: null (all) or an integer >= 1"),
    ],
)
def test_bad_explainer_settings_stop_the_job_with_one_clear_line(override, message, data_root):
    assert message in refusal([*TINY, override], data_root)


@pytest.fixture(scope="module")
def finished_job(data_root, tmp_path_factory):
    """A tiny job run like a user runs it (``python -m xilsweep.run``), so it has its .hydra/ folder."""
    out = tmp_path_factory.mktemp("explain") / "job"
    result = run_xilsweep(
        [*TINY, "explainer.attribution_every=2", f"data.root={data_root}", f"hydra.run.dir={out}"], out.parent
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_job_logs_reliance_every_epoch_and_attributions_on_their_schedule(finished_job):
    metrics = json.loads((finished_job / "metrics.json").read_text())
    ea = events(finished_job)
    n_epochs = metrics["epochs_run"] + 1  # epoch 0 is the confounded model
    assert n_epochs == 3
    for figure in RELIANCE:
        key, scalars = figure.key, ea.Scalars(figure.tag)
        expected = [0, 2] if figure.needs_attributions else list(range(n_epochs))  # attribution_every=2
        assert [e.step for e in scalars] == expected, figure.tag
        # epoch 0 is the confounded model, on the monitored test images like its reference line
        assert scalars[0].value == pytest.approx(ea.Scalars(f"Confounded/{key}")[0].value), key
        assert 0 <= metrics[key] <= (100 if key == "wrong_reason_score" else 1)
        assert f"Final/{key}" in ea.Tags()["scalars"]
    assert metrics["confounded"]["dot_flip_rate"] > 0.3  # the starting model relies on the dots
    views = {"corrected_samples", "corrected_original", "test_confounded_class", "test_other_classes"}
    assert {f"Explanations/{v}" for v in views} <= set(ea.Tags()["images"])
    for view in views:
        grids = ea.Images(f"Explanations/{view}")
        assert [g.step for g in grids] == [0, 2]
    assert 0 < metrics["reasons_seconds_per_epoch"] < 10


FIGURES = ["before_after", "corrected_samples", "corrected_original", "test_confounded_class", "test_other_classes"]


def test_explain_command_writes_each_figure_as_png_and_pdf(finished_job, capsys):
    assert explain_main([str(finished_job), "--n", "4", "--dpi", "40"]) == 0
    out = finished_job / "explanations"
    assert capsys.readouterr().out.split() == [str(out / f"{name}.{fmt}") for name in FIGURES for fmt in FORMATS]
    for name in FIGURES:
        image = read_image(str(out / f"{name}.png"), ImageReadMode.RGB)
        assert (image[0].int() - image[2].int()).abs().max() > 50  # heat maps: coloured, not gray
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    # --confounded leaves the corrected model's row out, into its own folder
    assert explain_main([str(finished_job), "--confounded", "--n", "4", "--dpi", "40"]) == 0
    with_corrected = read_image(str(out / "before_after.png"))
    without = read_image(str(out / "confounded" / "before_after.png"))
    assert without.shape[2] == with_corrected.shape[2] and without.shape[1] < with_corrected.shape[1]


@pytest.fixture(scope="module")
def finished(finished_job):
    return assemble(run_config(finished_job))


def test_figures_show_the_views_of_tensorboard_with_their_labels(finished):
    job, c = finished, CONFOUNDED_CLASS
    shown = shown_views(job, 4)
    images = view_images(job.data, job.pool.corrected, job.pool.original, c, 4)
    assert list(shown) == list(images)
    for name, split in shown.items():
        assert torch.equal(split.x, images[name]), name
    assert torch.equal(shown["corrected_samples"].labels, job.pool.corrected.labels[:4])
    assert (shown["test_confounded_class"].labels == c).all() and (shown["test_other_classes"].labels != c).all()
    assert dotted_examples(job.data.test_dotted, c, 4).labels.tolist() == [c, c, 1 - c, 1 - c]
    assert class_names(job) == ["0", "8"]  # 08MNIST's class 1 is the digit 8


def test_a_row_explains_the_true_or_the_predicted_class(finished):
    job = finished
    dotted = dotted_examples(job.data.test_dotted, CONFOUNDED_CLASS, 32)  # the confounded model calls 0s 8
    by_label, by_prediction = (explain(job.explainer, job.model, dotted, target) for target in ("label", "predicted"))
    probabilities = predict_logits(job.model, dotted.x).softmax(1)
    assert torch.equal(by_label.predicted, probabilities.argmax(1))
    assert torch.allclose(by_label.probability, probabilities.amax(1))
    wrong = by_label.predicted != dotted.labels
    assert wrong.any() and (~wrong).any()
    differs = (by_label.overlays != by_prediction.overlays).flatten(1).any(1)
    assert torch.equal(differs, wrong)  # the maps differ exactly where the prediction is wrong


def test_a_figure_labels_its_rows_its_tiles_and_its_colour_scale():
    shown = Split(torch.rand(3, 1, 28, 28), torch.eye(2)[[1, 0, 1]], torch.zeros(3, 1, 28, 28, dtype=torch.bool))
    row = Explained(overlay(shown.x, torch.rand(3, 1, 28, 28)), torch.tensor([1, 1, 0]), torch.tensor([0.9, 0.75, 0.6]))
    fig = draw("run\nmaps", shown, {"confounded\nmodel": row, "oracle": row}, ["0", "8"])
    tiles, bar = fig.axes[:9], fig.axes[9]  # 3 rows of 3, then the colour scale
    assert [ax.get_title() for ax in tiles[:6]] == [
        *("true 8", "true 0", "true 8"),
        *("pred 8, p=0.90", "pred 8, p=0.75", "pred 0, p=0.60"),
    ]
    assert [tiles[i].title.get_color() for i in (3, 4, 5)] == ["black", WRONG, WRONG]
    assert [tiles[i].get_ylabel() for i in (0, 3, 6)] == ["image", "confounded\nmodel", "oracle"]
    assert "each image's maximum" in bar.get_ylabel()
    assert fig.get_suptitle() == "run\nmaps"
    # the scale's colours are the overlay's over a black pixel: black for 0, yellow for the maximum
    assert attribution_colours()(0.0) == (0, 0, 0, 1) and attribution_colours()(1.0) == (1, 1, 0, 1)


def test_explain_command_refuses_a_folder_that_is_not_a_run_and_a_run_without_weights(finished_job, tmp_path, capsys):
    assert explain_main([str(tmp_path)]) == 2
    assert f"{tmp_path} is not a run folder (no .hydra/config.yaml)" in capsys.readouterr().err
    shutil.copytree(finished_job / ".hydra", tmp_path / "job" / ".hydra")
    assert explain_main([str(tmp_path / "job")]) == 2
    assert "model.pth is missing" in capsys.readouterr().err
    assert explain_main([str(tmp_path / "job"), "--confounded", "--n", "2", "--dpi", "20"]) == 0  # needs no weights
    (tmp_path / "job" / "model.pth").write_bytes(b"not a model")
    assert explain_main([str(tmp_path / "job")]) == 2
    assert "model.pth is unreadable" in capsys.readouterr().err
