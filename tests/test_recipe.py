import json
import pathlib

import pytest

from keras_cxr.config import ConfigError
from keras_cxr.data import Augmentation
from keras_cxr.recipe import (
    SWA, Loss, Model, Optimizer, Recipe, apply_overrides, load_recipe, parse_value, seed_recipe,
)

RECIPES = pathlib.Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.py")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_round_trip(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    again = Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe


def test_seed_gpu_recipes_carry_the_seed_settings():
    recipe = load_recipe(RECIPES / "effv2l.py")
    assert recipe.model == Model(name="effv2_l", image_size=512, dropout=0.40, weights="imagenet")
    assert recipe.loss == Loss(alpha=(1.0, 1.5, 2.0, 12.0), gamma=3.5, label_smoothing=0.12)
    assert recipe.optimizer.learning_rate == 8e-5 and recipe.optimizer.weight_decay == 1.5e-4
    assert recipe.swa == SWA(start_epoch=35) and recipe.epochs == 45
    assert recipe.mixing.mixup_p == 0.6 and recipe.mixing.cutmix_p == 0.5
    assert recipe.augmentation.hflip is False


def test_unknown_field_is_an_error_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from keras_cxr.recipe import Recipe, Optimizer\n"
        "recipe = Recipe(optimizer=Optimizer(learning_rat=1e-3))\n"
    )
    with pytest.raises(ConfigError, match=r"bad.py: unknown field 'learning_rat' in Optimizer; did you mean 'learning_rate'"):
        load_recipe(bad)


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"Recipe.epochs: expected an integer, got '10'"):
        Recipe(epochs="10")
    with pytest.raises(ConfigError, match=r"Augmentation.rotation: expected a number"):
        Augmentation(rotation="ten")
    with pytest.raises(ConfigError, match=r"Recipe.sampling: expected one of"):
        Recipe(sampling="balance")


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="Loss.alpha has 3 values but Data.class_names has 4"):
        Recipe(loss=Loss(alpha=(1.0, 1.0, 1.0)))
    with pytest.raises(ConfigError, match="SWA.start_epoch must be between 1 and epochs=10"):
        Recipe(epochs=10, swa=SWA(start_epoch=11))
    with pytest.raises(ConfigError, match="unknown model 'effv3'"):
        Model(name="effv3")


def test_missing_recipe_file_and_missing_recipe_variable(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="must define `recipe = Recipe"):
        load_recipe(empty)


def test_overrides_convert_types_and_reject_unknown_keys():
    recipe = apply_overrides(
        Recipe(),
        ["optimizer.learning_rate=3e-4", "epochs=3", "model.image_size=96",
         "loss.alpha=[1, 1, 2, 4]", "swa.start_epoch=2", "data.data_dir=/tmp/x"],
    )
    assert recipe.optimizer == Optimizer(learning_rate=3e-4)
    assert recipe.epochs == 3 and recipe.model.image_size == 96
    assert recipe.loss.alpha == (1.0, 1.0, 2.0, 4.0)
    assert recipe.swa.start_epoch == 2 and recipe.data.data_dir == "/tmp/x"
    with pytest.raises(ConfigError, match=r"assignments optimizer.learning_rat=1: unknown field 'optimizer.learning_rat' in Optimizer; did you mean 'learning_rate'"):
        apply_overrides(Recipe(), ["optimizer.learning_rat=1"])
    with pytest.raises(ConfigError, match=r"unknown field 'optimiser' in Recipe; did you mean 'optimizer'"):
        apply_overrides(Recipe(), ["optimiser.learning_rate=1"])
    with pytest.raises(ConfigError, match=r"epochs is a value, not a section"):
        apply_overrides(Recipe(), ["epochs.x=1"])
    with pytest.raises(ConfigError, match=r"expects dotted.key=value"):
        apply_overrides(Recipe(), ["epochs"])
    with pytest.raises(ConfigError, match=r"Recipe.epochs: expected an integer, got 'ten'"):
        apply_overrides(Recipe(), ["epochs=ten"])


def test_overrides_are_checked_together_not_one_by_one():
    recipe = Recipe(epochs=40, swa=SWA(start_epoch=31))
    shorter = apply_overrides(recipe, ["epochs=3", "swa.start_epoch=none"])
    assert shorter.epochs == 3 and shorter.swa.start_epoch is None
    with pytest.raises(ConfigError, match="SWA.start_epoch must be between 1 and epochs=3"):
        apply_overrides(recipe, ["epochs=3"])


def test_parse_value():
    assert parse_value("none") is None and parse_value("True") is True
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5
    assert parse_value("effv2_s") == "effv2_s"
    assert parse_value("[0.9, 1.1]") == [0.9, 1.1]


def test_seed_recipe_replace():
    recipe = seed_recipe(batch_size=8)
    assert recipe.batch_size == 8 and recipe.model.name == "effv2_s"
    with pytest.raises(ConfigError, match="unknown field 'batchsize'"):
        seed_recipe(batchsize=8)


def test_extra_train_takes_one_path_or_a_list():
    assert apply_overrides(Recipe(), ["data.extra_train=/x/pseudo.csv"]).data.extra_train == ("/x/pseudo.csv",)
    assert apply_overrides(Recipe(), ["data.extra_train=['a.csv','b.csv']"]).data.extra_train == ("a.csv", "b.csv")
    with pytest.raises(ConfigError, match=r"Data.extra_train\[0\]: expected a string"):
        apply_overrides(Recipe(), ["data.extra_train=[1]"])
