"""Right for the right reasons: explanations of a model's predictions and
metrics of how much they rest on the confounder (the dots).

Explainers (config group ``explainer``) turn a batch of images into
non-negative attribution maps ``[N, 1, H, W]`` for the true or the predicted
class: ``InputGradients`` (``|d logit / d x|``, captum ``Saliency``, the
default) or ``GradCAM`` (``xilsweep.gradcam`` on the model's last
convolution, ReLU'd, each unit placed at the centre of its receptive field).
``Explainer.reasons`` gathers one ``metrics.Evidence`` of a model on the
dotted test images with a few batched passes and computes every reliance
figure of ``metrics.RELIANCE`` from it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from xilsweep.data import Split, XILData
from xilsweep.errors import SettingError, require
from xilsweep.gradcam import gradcam, placed
from xilsweep.metrics import RELIANCE, Evidence, per_image_max
from xilsweep.training import EVAL_BATCH_SIZE, predict_logits

THRESHOLD_RULES = ("mean",)
TARGETS = ("label", "predicted")
# Images per forward/backward pass, as for evaluation.
CHUNK = EVAL_BATCH_SIZE


def dotted_evidence(
    model: nn.Module, clean_x: torch.Tensor, dotted: Split, confounded_class: int | None, clean_pred=None
) -> Evidence:
    """What ``model`` does on ``dotted`` (the images ``clean_x`` with dots pasted in, image
    for image): its predictions on ``dotted`` and, among the images with dots outside
    ``confounded_class`` (none without one), its predictions on the same images clean.
    ``clean_pred``: the predicted classes on ``clean_x``, where already known."""
    device = next(model.parameters()).device
    dotted = dotted.to(device)
    labels = dotted.labels
    dotted_pred = predict_logits(model, dotted.x, CHUNK).argmax(1)
    has_dots = dotted.mask.flatten(1).any(1)
    others = None
    if confounded_class is not None:
        others = has_dots & (labels != confounded_class)
        if clean_pred is None:
            clean_pred = predict_logits(model, clean_x[others.to(clean_x.device)].to(device), CHUNK).argmax(1)
        else:
            clean_pred = clean_pred.to(device)[others]
    return Evidence(dotted_pred, labels, has_dots, confounded_class, clean_pred, others)


def validation_reliance(model: nn.Module, val: Split, val_dotted: Split, confounded_class: int | None) -> dict:
    """The forward reliance figures on validation data only: on ``val_dotted`` (``val`` with
    the pool's confounders pasted in, image for image, see ``correction.dotted_validation``)
    against ``val``, under each figure's ``val_key`` without ``best_`` (``val_dot_flip_rate``)."""
    evidence = dotted_evidence(model, val.x, val_dotted, confounded_class)
    return {f.val_key.removeprefix("best_"): f.compute(evidence) for f in RELIANCE if f.val_key}


def overlay(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """RGB images [N, 3, H, W]: the grayscale input at half brightness (so the
    heat stands out against white ink and dots) blended with the map, scaled to
    its maximum per image, from dark red (weak) to yellow (strongest)."""
    heat = maps / per_image_max(maps).clamp_min(torch.finfo(maps.dtype).tiny)
    gray = 0.5 * x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    colour = torch.cat([torch.ones_like(heat), heat, torch.zeros_like(heat)], dim=1)
    return gray * (1 - heat) + colour * heat


def view_images(
    data: XILData, corrected: Split, original: Split, confounded_class: int | None, n: int = 16
) -> dict[str, torch.Tensor]:
    """Up to ``n`` images per view shown with explanations: the user-corrected
    samples, the same samples with their dots, and clean test images of the
    confounded class and of the others (of every class when there is no
    confounded class). 16 per view keep the per-epoch grids at about 90 kB."""
    c, test = confounded_class, data.test
    views = {"corrected_samples": corrected.x[:n], "corrected_original": original.x[:n]}
    if c is None:
        views["test_clean"] = test.x[:n]
    else:
        views["test_confounded_class"] = test.x[test.labels == c][:n]
        views["test_other_classes"] = test.x[test.labels != c][:n]
    return {name: x for name, x in views.items() if len(x)}


def training_images(train: Split, pool, confounded_class: int | None) -> dict[str, torch.Tensor]:
    """The image grids a job shows once: training images of the confounded class (all
    classes without one), and the pool before and after the user's correction."""
    shown = train.subset(train.labels == confounded_class) if confounded_class is not None else train
    return {
        "Images/confounded_samples": shown.x,
        "Images/corrected_original": pool.original.x,
        "Images/corrected_samples": pool.corrected.x,
    }


class Explainer:
    """Attribution maps, and the reason metrics built on them.

    ``target`` is the class the metrics explain: ``label``, the true class (default: every
    model is asked the same question, what in a dotted 8 speaks for "8", so
    the confounded model, the oracle and a corrected model are compared on
    equal terms) or ``predicted`` (why the model decided as it did).
    ``threshold`` binarises the maps for ``wrong_reason_score`` (``mean`` or a
    number in [0, 1]); ``n_images`` caps the dotted test images explained per
    evaluation (null: all); ``attribution_every``: the attribution metrics and
    explanation grids every this many epochs of fine-tuning (the confounded
    and the final model always), the forward-only metrics every epoch, both
    during fine-tuning on ``monitor_images`` test images (a fixed seeded
    subset, the same for every model; null: all), the reported figures of the
    references and the final model on the whole test set.
    """

    name = "explainer"

    def __init__(
        self,
        threshold: float | int | str = "mean",
        n_images: int | None = 1000,
        target: str = "label",
        attribution_every: int = 5,
        monitor_images: int | None = 300,
    ):
        require(
            threshold in THRESHOLD_RULES
            or (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1),
            "threshold",
            threshold,
            "mean (the literature's data-dependent threshold) or a number in [0, 1]",
        )
        require(
            n_images is None or (isinstance(n_images, int) and not isinstance(n_images, bool) and n_images >= 1),
            "n_images",
            n_images,
            "null (all) or an integer >= 1",
        )
        require(target in TARGETS, "target", target, " | ".join(TARGETS))
        require(
            isinstance(attribution_every, int) and attribution_every >= 1,
            "attribution_every",
            attribution_every,
            "an integer >= 1",
        )
        require(
            monitor_images is None or (isinstance(monitor_images, int) and monitor_images >= 1),
            "monitor_images",
            monitor_images,
            "null (all) or an integer >= 1",
        )
        self.threshold, self.n_images, self.target = threshold, n_images, target
        self.attribution_every, self.monitor_images = attribution_every, monitor_images

    def check(self, model: torch.nn.Module) -> None:
        """Raise a SettingError when this method cannot explain ``model``."""

    def _maps(self, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attribute(self, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Non-negative maps [N, 1, H, W] for ``target`` (default: the predicted class)."""
        device = next(model.parameters()).device
        x = x.to(device)
        target = predict_logits(model, x, CHUNK).argmax(1) if target is None else target.to(device)
        model.eval()  # explanations of the deployed model: no dropout
        return torch.cat(
            [self._maps(model, xc, tc).detach() for xc, tc in zip(x.split(CHUNK), target.split(CHUNK), strict=True)]
        )

    def views(self, model: torch.nn.Module, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Overlays of each named image batch with its explanation (one batched pass)."""
        if not images:
            return {}
        x = torch.cat(list(images.values()))
        shown = overlay(x, self.attribute(model, x).to(x.device)).cpu()
        return dict(zip(images, shown.split([len(v) for v in images.values()]), strict=True))

    def reasons(
        self,
        model: torch.nn.Module,
        data: XILData,
        confounded_class: int | None,
        attributions: bool = True,
        monitor: bool = False,
        clean_pred: torch.Tensor | None = None,
    ) -> dict:
        """Every reliance figure (``metrics.RELIANCE``) of ``model`` on the test set
        (docs/reliance.md); a figure that does not apply, or is not computed, is None.

        The maps explain the dotted test images of ``confounded_class`` (all
        dotted test images when it is None, which also drops the flip rate);
        ``attributions=False`` skips them (forward passes only); ``monitor``
        uses the ``monitor_images`` subset. ``clean_pred``: the model's predicted
        classes on the whole clean test set, where already known (not with ``monitor``).
        """
        device = next(model.parameters()).device
        test, dotted = data.test, data.test_dotted
        if monitor and self.monitor_images is not None:
            chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: self.monitor_images]
            test, dotted = test.subset(chosen), dotted.subset(chosen)
        c, dotted = confounded_class, dotted.to(device)  # placed once: the evidence and the maps read it
        # test_dotted is the clean test set plus dots, image for image
        evidence = dotted_evidence(model, test.x, dotted, c, clean_pred)
        labels = evidence.labels
        explained = torch.nonzero(evidence.has_dots & (labels == c) if c is not None else evidence.has_dots).flatten()
        explained = explained[: self.n_images if attributions else 0]
        if len(explained):
            target = labels if self.target == "label" else evidence.dotted_pred
            maps = self.attribute(model, dotted.x[explained], target[explained])
            evidence = replace(evidence, maps=maps, masks=dotted.mask[explained], threshold=self.threshold)
        return {
            f.key: f.compute(evidence) if evidence.maps is not None or not f.needs_attributions else None
            for f in RELIANCE
        }


class GradCAM(Explainer):
    """GradCAM on ``model.last_conv`` (``xilsweep.gradcam``), ReLU'd, each unit placed at
    its receptive field's centre in the input."""

    name = "gradcam"

    def check(self, model: torch.nn.Module) -> None:
        if getattr(model, "last_conv", None) is None:
            raise SettingError(
                "explainer", self.name, f"input_gradients ({type(model).__name__} has no convolution layer for GradCAM)"
            )

    def _maps(self, model, x, target):
        with torch.enable_grad():
            _, maps = gradcam(model, x, target)
        return placed(model, F.relu(maps.detach()), tuple(x.shape[-2:]))


class InputGradients(Explainer):
    """|d logit / d x| of the predicted class (captum Saliency): exact pixel resolution,
    summed over the colour channels (a pixel's attribution, as its mask marks it)."""

    name = "input_gradients"

    def _maps(self, model, x, target):
        from captum.attr import Saliency  # on first use: captum.attr also loads matplotlib

        # a fresh leaf that requires grad (captum would otherwise set it, with a warning)
        return Saliency(model).attribute(x.detach().requires_grad_(), target=target, abs=True).sum(1, keepdim=True)
