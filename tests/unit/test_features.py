"""Tests healmesh.features: encoding records and frames."""

import numpy as np

from healmesh import features, schema


def test_encode_records_matches_encode_frame(frame):
    records = frame[list(schema.active().feature_names)].to_dict("records")
    assert np.array_equal(features.encode_records(records), features.encode_frame(frame))
    assert features.encode_frame(frame).shape[1] == len(features.active().encoded_names)
