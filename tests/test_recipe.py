import pytest

from conftest import RECIPES, cli, run_module, tiny_overrides
from gandeploy.errors import RecipeError
from gandeploy.recipe import Recipe, load_recipe, recipe_from_dict

SHIPPED = sorted(RECIPES.glob("*.yaml"))


def test_every_shipped_recipe_loads():
    names = {p.stem for p in SHIPPED}
    assert {"dcgan_mnist", "wgan_gp_mnist", "cdcgan_mnist", "dcgan_celeba", "wgan_gp_celeba"} <= names
    for path in SHIPPED:
        recipe = load_recipe(path)
        assert recipe.name == path.stem


def test_celeba_recipes_follow_their_papers():
    dcgan = load_recipe(RECIPES / "dcgan_celeba.yaml")
    assert (dcgan.train.batch_size, dcgan.optim.g_lr, dcgan.optim.betas[0]) == (128, 2e-4, 0.5)
    assert (dcgan.data.resolution, dcgan.data.channels, dcgan.model.init) == (64, 3, "dcgan")
    wgan = load_recipe(RECIPES / "wgan_gp_celeba.yaml")
    assert (wgan.loss.name, wgan.loss.gp_weight, wgan.optim.d_steps) == ("wgan-gp", 10.0, 5)
    assert (wgan.optim.d_lr, wgan.optim.betas) == (1e-4, (0.0, 0.9))
    assert wgan.model.d_norm != "batch"


def test_defaults_live_in_the_schema_and_overrides_are_typed():
    recipe = recipe_from_dict({"name": "x"}, ["train.steps=7", "optim.betas=[0.0, 0.9]", "optim.g_lr=1e-3",
                                              "data.limit=null", "model.spectral_norm=true"])
    assert recipe.train.steps == 7 and recipe.optim.betas == (0.0, 0.9)
    assert recipe.optim.g_lr == 1e-3 and isinstance(recipe.optim.g_lr, float)
    assert recipe.model.spectral_norm is True and recipe.data.limit is None
    assert recipe.train.batch_size == Recipe().train.batch_size
    # the resolved recipe round-trips through its own YAML
    assert recipe_from_dict(__import__("yaml").safe_load(recipe.to_yaml())) == recipe


@pytest.mark.parametrize("overrides, message", [
    (["train.setps=5"], "unknown key train.setps (did you mean train.steps?)"),
    (["trian.steps=5"], "unknown key trian (did you mean train?)"),
    (["train.steps=abc"], "train.steps: expected an integer, got 'abc'"),
    (["train.steps=2.5"], "train.steps: expected an integer, got 2.5"),
    (["train.ema=maybe"], "train.ema: expected true or false"),
    (["train.batch_size=0"], "train.batch_size: 0 is out of range; it must be >= 1"),
    (["optim.g_lr=0"], "optim.g_lr: 0.0 is out of range; it must be > 0"),
    (["loss.label_smoothing=0.9"], "loss.label_smoothing: 0.9 is out of range; it must be <= 0.5"),
    (["optim.betas=[0.5]"], "optim.betas: expected a list of 2 numbers"),
    (["optim.betas=[1.5, 0.9]"], "optim.betas: [1.5, 0.9] is out of range"),
    (["model.name=stylegan"], "model.name: unknown model 'stylegan'; valid: dcgan, infogan, mlp"),
    (["loss.name=wgan2"], "loss.name: unknown loss 'wgan2'; valid: ns, wgan, wgan-gp, hinge, lsgan"),
    (["loss.r1_gamma=10"], "loss.r1_gamma: the R1 penalty is per real image"),
    (["loss.augment=translation,flip"], "loss.augment: unknown augmentation 'flip'; valid: translation, cutout"),
    (["optim.name=sgd"], "optim.name: 'sgd' is not one of adam, rmsprop"),
    (["loss.clip=0"], "loss.clip: 0.0 is out of range; it must be > 0"),
    (["model.d_norm=group"], "model.d_norm: 'group' is not one of batch, layer, instance, none"),
    (["model.name=dcgan", "data.resolution=48"], "data.resolution: dcgan builds 28, 32, 64, 128 pixels, not 48"),
    (["model.name=infogan", "data.resolution=64"], "data.resolution: infogan builds 28, 32 pixels, not 64"),
    (["loss.name=wgan-gp"], "wgan-gp needs a critic without BatchNorm"),
    (["data.source=folder"], "data.path: data.source=folder needs data.path"),
    (["train.steps"], "override 'train.steps' is not KEY=VALUE"),
])
def test_bad_recipes_get_one_clear_line(overrides, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPES / "dcgan_mnist.yaml", overrides)
    assert message in str(err.value)
    code, output = cli("train", str(RECIPES / "dcgan_mnist.yaml"), *overrides, "--dry-run")
    assert code == 2
    assert output.strip().count("\n") == 0 and output.startswith("error: ") and message in output


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: [steps: 3\n")
    code, output = cli("train", str(bad), "--dry-run")
    assert code == 2 and "not valid YAML at line" in output
    code, output = cli("train", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml not found" in output


def test_missing_data_says_where_and_how(tmp_path):
    code, output = cli("train", str(RECIPES / "dcgan_celeba.yaml"), f"data.path={tmp_path}/celeba/img_align_celeba",
                       "--out", str(tmp_path / "run"))
    assert code == 2
    assert "img_align_celeba not found" in output and "000001.jpg" in output
    code, output = cli("train", str(RECIPES / "dcgan_mnist.yaml"), "data.source=npz", f"data.path={tmp_path}/x.npz",
                       "--out", str(tmp_path / "run2"))
    assert code == 2 and "x.npz not found" in output


def test_dry_run_prints_the_resolved_recipe_and_writes_nothing(tmp_path):
    code, output = cli("train", str(RECIPES / "dcgan_mnist.yaml"), "train.steps=9", "--out", str(tmp_path / "r"),
                       "--dry-run")
    assert code == 0
    resolved = recipe_from_dict(__import__("yaml").safe_load(output))
    assert resolved.train.steps == 9 and resolved.loss.gp_weight == Recipe().loss.gp_weight
    assert not (tmp_path / "r").exists()


def test_real_process_prints_no_traceback():
    proc = run_module("train", str(RECIPES / "dcgan_mnist.yaml"), "model.name=nope", "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: model.name: unknown model 'nope'; valid: dcgan, infogan, mlp"
    assert "Traceback" not in proc.stderr + proc.stdout


def test_tiny_overrides_are_valid():
    load_recipe(RECIPES / "dcgan_mnist.yaml", tiny_overrides())
