import numpy as np
import pytest
import skops.io as sio
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from skops.io.exceptions import UntrustedTypesFoundException

from service.ml.artifacts import TRUSTED_TYPES, dump_model, load_model
from service.ml.frame import rows_to_frame


def test_every_family_round_trips_with_allow_list(datasets, fitted):
    for (name, family), pipe in fitted.items():
        data = dump_model(pipe)
        assert set(sio.get_untrusted_types(data=data)) <= set(TRUSTED_TYPES), (name, family)
        loaded = load_model(data)
        d = datasets[name]
        frame = rows_to_frame(d.rows[:200], d.fields)
        np.testing.assert_array_equal(loaded.predict_proba(frame), pipe.predict_proba(frame))


def _not_allowed(x):
    return x


def test_object_outside_allow_list_is_refused():
    evil = Pipeline([("f", FunctionTransformer(_not_allowed))])
    with pytest.raises(UntrustedTypesFoundException):
        load_model(sio.dumps(evil))


def test_non_pipeline_is_refused():
    with pytest.raises(TypeError):
        load_model(sio.dumps({"a": 1}))
