"""Keras reading from a ckptfs mount: the same model saved as .keras (zip) and as legacy .h5."""

import keras
import pytest

from artifacts import describe_difference, raw_equal


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_keras_load_model_same_weights_and_predictions(small_published, mount, fmt):
    models = small_published.tree.keras
    mnt = mount(small_published)
    path = mnt.path(models.native if fmt == "keras" else models.h5)

    model = keras.models.load_model(path, compile=False)

    weights = model.get_weights()
    assert len(weights) == len(models.weights), f"{len(weights)} weight arrays"
    problems = [describe_difference(f"weight {i}", want, got)
                for i, (want, got) in enumerate(zip(models.weights, weights))
                if not raw_equal(want, got)]
    assert not problems, "\n".join(problems)
    y = model.predict(models.x, verbose=0)
    assert raw_equal(y, models.y), describe_difference("predictions", models.y, y)
