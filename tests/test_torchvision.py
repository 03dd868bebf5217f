"""model=torchvision: any torchvision architecture adapted to the data, a correction job with
resnet18 on the colour digits, and the settings it refuses in one line."""

import json
import urllib.error

import pytest
import torch
from torch import nn

from helpers import TINY, job_config
from xilsweep.errors import SettingError
from xilsweep.job import ConfigError, assemble
from xilsweep.models import TorchvisionModel, adapted_conv
from xilsweep.run import run_job

# resnet18 on the smallest colour digits, references trained on a fifth of the training digits
SHORT = [
    *TINY,
    "data=patch_mnist",
    "data.image_size=28",
    "data.patch_size=9",
    "data.val_fraction=0.8",
    "model=torchvision",
    "model.name=resnet18",
    "trainer.max_epochs=1",
    "explainer.n_images=50",
    "explainer.monitor_images=50",
]


def test_resnet18_runs_a_correction_job_on_colour_digits_with_gradcam_end_to_end(data_root, tmp_path):
    cfg = job_config([*SHORT, "loss=rrr_g", "explainer=gradcam", "data.n_train=200"], data_root)
    out = tmp_path / "job"
    out.mkdir()
    run_job(cfg, out)
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "done" and record["epochs_run"] == 1
    assert all(record[kind]["attribution_in_mask"] is not None for kind in ("confounded", "oracle"))
    assert record["attribution_in_mask"] is not None and record["history"][1]["RRR-G/penalty"] >= 0
    state = torch.load(out / "model.pth", weights_only=True)
    assert state["net.conv1.weight"].shape[1] == 3 and state["net.fc.weight"].shape[0] == 2


def test_cdep_is_refused_on_resnet18_in_one_line_before_any_data_or_training(data_root):
    with pytest.raises(ConfigError) as e:
        assemble(job_config([*SHORT, "loss=cdep", "data.seed=77"], data_root))
    message = str(e.value)
    assert message.startswith("model='resnet18' is not allowed: a plain stack of layers") and "\n" not in message
    assert "residual blocks or batch norm" in message
    assert not any((data_root / "PatchMNIST").glob("*/settings.json")) or all(
        "77" not in p.read_text() for p in (data_root / "PatchMNIST").glob("*/settings.json")
    )


def test_first_layer_and_head_follow_the_data_and_gradcam_takes_the_layer_given():
    model = TorchvisionModel("resnet18", gradcam_layer="layer4", num_classes=10, in_shape=(1, 28, 28))
    assert model.net.conv1.in_channels == 1 and model.net.fc.out_features == 10
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10) and model.last_conv is model.net.layer4
    assert "last_conv" not in "".join(model.state_dict())  # the layer is named, not registered twice
    vgg = TorchvisionModel("vgg11", in_shape=(3, 48, 48))
    assert vgg.last_conv is [m for m in vgg.net.features if isinstance(m, nn.Conv2d)][-1]


def test_an_adapted_first_layer_sees_a_gray_image_as_the_pretrained_one_did():
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 3, padding=1)
    gray = torch.rand(2, 1, 10, 10)
    one = adapted_conv(rgb, 1)
    assert one.in_channels == 1
    torch.testing.assert_close(one(gray), rgb(gray.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"name": "resnet1"}, "name='resnet1' is not allowed: a torchvision classification model: alexnet,"),
        ({"name": "vgg11"}, "name='vgg11' is not allowed: an architecture that takes 1x28x28 images"),
        ({"weights": "IMAGENET"}, "weights='IMAGENET' is not allowed: null (random) or one of IMAGENET1K_V1"),
        ({"gradcam_layer": "layer9"}, "gradcam_layer='layer9' is not allowed: null or a submodule of resnet18"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(settings, message):
    with pytest.raises(SettingError) as e:
        TorchvisionModel(**settings)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_weights_that_cannot_be_downloaded_are_one_line_and_leave_no_file(monkeypatch, tmp_path):
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(SettingError) as e:
        TorchvisionModel(weights="IMAGENET1K_V1")
    message = str(e.value)
    assert message.startswith("weights='IMAGENET1K_V1' is not allowed: weights torchvision can fetch (URLError")
    assert ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1] in message and "weights=null" in message
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
