"""Model specs: torchvision / timm / file factories, their errors, input sizes, weight files."""

import sys
import textwrap

import pytest
import torch
from torch import nn

from surgery.errors import MissingExtraError, SurgeryError, UnknownModelError
from surgery.zoo.models import build_model, default_input_size, input_channels, load_weights

MODEL_FILE = textwrap.dedent(
    """
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=10, in_chans=3):
            super().__init__()
            self.conv = nn.Conv2d(in_chans, 4, 3)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    def net(num_classes=10, **kwargs):
        return Net(num_classes, **kwargs)

    def fixed():
        return Net(5)

    def not_a_model():
        return 42
    """
)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(MODEL_FILE)
    return path


def on_meta(spec, **kwargs):
    with torch.device("meta"):
        return build_model(spec, **kwargs)


def test_torchvision_model_gets_num_classes():
    model = on_meta("torchvision:resnet18", num_classes=10)
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 10


def test_torchvision_default_head_and_kwargs():
    model = on_meta("torchvision:resnet18", zero_init_residual=True)
    assert model.fc.out_features == 1000


def test_timm_model_gets_num_classes_and_pretrained_tag():
    assert on_meta("timm:resnet18", num_classes=7).fc.out_features == 7
    assert on_meta("timm:resnet18.a1_in1k", num_classes=3).fc.out_features == 3


@pytest.mark.parametrize("spec", ["timm:vit_tiny_patch16_224", "timm:vit_tiny_patch16_224.augreg_in21k"])
def test_timm_model_with_a_fixed_input_size_is_built_for_the_input_size(spec):
    with torch.device("meta"):
        model = build_model(spec, 10, input_size=64)
    assert model.patch_embed.img_size == (64, 64)
    assert model(torch.zeros(1, 3, 64, 64, device="meta")).shape == (1, 10)


def test_input_size_leaves_models_that_take_any_size_alone():
    with torch.device("meta"):
        build_model("timm:resnet18", input_size=64)  # ResNet's constructor has no img_size
        build_model("torchvision:resnet18", input_size=64)
        build_model("cifar:resnet20", input_size=16)


def test_file_factory_gets_num_classes_and_kwargs(model_file):
    model = build_model(f"{model_file}:net", num_classes=3, in_chans=1)
    assert model.fc.out_features == 3 and model.conv.in_channels == 1


def test_file_class_is_a_factory(model_file):
    assert build_model(f"{model_file}:Net", num_classes=4).fc.out_features == 4


def test_file_factory_without_num_classes_warns_and_ignores_it(model_file):
    with pytest.warns(UserWarning, match="takes no num_classes"):
        model = build_model(f"{model_file}:fixed", num_classes=3)
    assert model.fc.out_features == 5


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("torchvision:resnet81", ["no model 'resnet81'", "Did you mean 'resnet18'"]),
        ("timm:resnt18", ["timm has no model 'resnt18'", "Did you mean 'resnet18'"]),
        ("timm:resnet5", ["timm has no model 'resnet5'", "Did you mean 'resnet50'"]),
        ("timm:notamodel", ["timm has no model 'notamodel'", "timm.list_models('*pattern*')"]),
        ("timm:resnet18.a1_in1kk", ["resnet18 has no pretrained tag 'a1_in1kk'", "Did you mean 'a1_in1k'"]),
        ("resnet18", ["not one of the accepted forms", "'torchvision:resnet18' or 'timm:resnet18'"]),
        ("tochvision:resnet18", ["unknown source 'tochvision'", "Did you mean 'torchvision'", "file.py:factory"]),
        ("torchvision:", ["names no model"]),
        ("torchvision:quantized_resnet18", ["none of the families", "torchvision.models.detection", "float"]),
        ("missing/model.py:net", ["model file 'missing/model.py' does not exist"]),
    ],
)
def test_unknown_specs_explain_themselves(spec, expected):
    with pytest.raises(UnknownModelError) as error:
        build_model(spec)
    for text in expected:
        assert text in str(error.value)


def test_missing_factory_suggests_close_matches_and_lists_callables(model_file):
    with pytest.raises(UnknownModelError, match="has no factory 'nett'. Did you mean 'net'") as error:
        build_model(f"{model_file}:nett")
    assert "['Net', 'fixed', 'net', 'not_a_model']" in str(error.value)


def test_file_without_factory(model_file):
    with pytest.raises(UnknownModelError, match="without a factory"):
        build_model(str(model_file))


def test_factory_must_return_a_module(model_file):
    with pytest.raises(UnknownModelError, match="returned int, not a torch.nn.Module"):
        build_model(f"{model_file}:not_a_model")


def test_default_input_size():
    inception = on_meta("torchvision:inception_v3", init_weights=False)
    assert default_input_size(inception, "torchvision:inception_v3") == 299
    assert default_input_size(on_meta("torchvision:resnet18"), "torchvision:resnet18") == 224
    assert default_input_size(on_meta("timm:inception_v3")) == 299  # timm's pretrained_cfg
    assert default_input_size(nn.Linear(2, 2)) == 224


def test_input_channels(model_file):
    assert input_channels(build_model(f"{model_file}:net", in_chans=1)) == 1
    assert input_channels(nn.Linear(2, 2)) == 3


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_load_weights_round_trip(model_file, tmp_path, suffix):
    source = build_model(f"{model_file}:net")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    target = load_weights(build_model(f"{model_file}:net"), path)
    assert torch.equal(target.conv.weight, source.conv.weight)


def test_load_weights_that_do_not_fit(model_file, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(build_model(f"{model_file}:net", num_classes=3).state_dict(), path)
    with pytest.raises(SurgeryError, match="do not fit Net") as error:
        load_weights(build_model(f"{model_file}:net"), path)
    assert "num-classes" in str(error.value)


def test_load_weights_missing_file(tmp_path):
    with pytest.raises(SurgeryError, match="does not exist"):
        load_weights(nn.Linear(2, 2), tmp_path / "nope.safetensors")


# ------------------------------------------------------------- hf: transformers models


def test_hf_model_is_built_from_its_small_config_with_num_classes_as_num_labels():
    pytest.importorskip("transformers")  # the [hf] extra (in dev)
    model = build_model("hf:ResNetForImageClassification", 7)
    assert type(model).__name__ == "ResNetForImageClassification" and model.config.num_labels == 7
    assert model.config.hidden_sizes == [16, 32]
    assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, 7)
    assert default_input_size(model, "hf:ResNetForImageClassification") == 32


def test_hf_config_fields_come_from_a_file_then_the_builder(tmp_path):
    pytest.importorskip("transformers")  # the [hf] extra (in dev)
    file = tmp_path / "vit.json"
    file.write_text('{"hidden_size": 48, "num_hidden_layers": 1}')
    model = build_model(f"hf:ViTForImageClassification:{file}", input_size=16, num_attention_heads=3)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.image_size) == (48, 1, 3, 16)
    assert default_input_size(model, "hf:ViTForImageClassification") == 16


@pytest.mark.parametrize(("spec", "fields", "expected"), [
    ("hf:VitForImageClassification", {}, r"transformers has no model class 'VitForImageClassification'\. "
                                         r"Did you mean 'ViTForImageClassification'"),
    ("hf:ViTForImageClassification", {"hiden_size": 32}, r"ViTConfig has no field 'hiden_size'\. Did you mean 'hidden_size'"),
    ("hf:ViTForImageClassification", {"hidden_size": "big"}, r"transformers refuses the config of ViTForImageClassification "
                                                             r"\(ViTConfig\): (.|\n)*expected int"),
    ("hf:SwinForImageClassification", {"num_heads": [1]},  # one stage's heads for two stages
     r"transformers could not build SwinForImageClassification from that config: IndexError"),
    ("hf:ViTForImageClassification:missing.json", {}, r"config file 'missing.json' does not exist"),
])
def test_bad_hf_specs_and_configs_explain_themselves(spec, fields, expected):
    pytest.importorskip("transformers")  # the [hf] extra (in dev)
    with pytest.raises(SurgeryError, match=expected):
        build_model(spec, **fields)


def test_hf_without_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers then raises ImportError
    with pytest.raises(MissingExtraError, match=r'pip install "tost-surgery\[hf\]"'):
        build_model("hf:ResNetForImageClassification")
