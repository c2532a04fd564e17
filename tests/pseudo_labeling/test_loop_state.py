"""The loop's state.json: read once, checked on resume, a damaged file refused with a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.pseudo_labeling.loop import PL_FOLDER, PseudoLabelLoopMixin
from nnunet_stipple.run_config import LEARNED_FROM_KEYS, RunConfig
from nnunet_stipple.trainers.label_proportion import LabelProportionMixin

SETTINGS = {"label_proportion": 0.1, "label_seed": 0, "num_bins": 5, "rounds": 1, "gamma_max": 0.5}


class StateStub(PseudoLabelLoopMixin, LabelProportionMixin):
    """The attributes the loop's state handling reads, nothing else."""
    default_selection = "max_probability"

    def __init__(self, base: Path, run_config: dict):
        self.output_folder_base, self.fold = str(base), 0
        self.fold_folder = base / "fold_0"
        self.run_config = RunConfig.from_dict(run_config)
        self.logged = []

    def print_to_log_file(self, *args):
        self.logged.append(" ".join(map(str, args)))


def _write_state(base: Path, text: str) -> Path:
    path = base / "fold_0" / PL_FOLDER / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("finished, relabeling_keys_kept", [([], False), ([0], False), ([0, 1], True)])
def test_relabeling_keys_are_kept_once_a_relabeled_round_finished(tmp_path, finished, relabeling_keys_kept):
    stub = StateStub(tmp_path, SETTINGS)
    _write_state(tmp_path, json.dumps({"settings": stub.trained_settings(), "finished_rounds": finished}))
    keys = stub.resume_keys()
    assert set(LEARNED_FROM_KEYS) <= set(keys)
    assert ("gamma_max" in keys) == relabeling_keys_kept


def test_state_is_read_from_disk_once(tmp_path):
    stub = StateStub(tmp_path, SETTINGS)
    path = _write_state(tmp_path, json.dumps({"settings": stub.trained_settings(), "finished_rounds": [0, 1]}))
    state = stub._load_state()                     # the resume check and the loop: one read
    path.write_text("garbage")                     # not read again ...
    assert "gamma_max" in stub.resume_keys() and stub._load_state() is state
    state["finished_rounds"].append(2)
    stub._save_state(state)                        # ... and what the trainer writes is what it reads back
    assert json.loads(path.read_text())["finished_rounds"] == [0, 1, 2]


def test_changed_relabeling_setting_after_a_relabeled_round_is_refused(tmp_path):
    recorded = StateStub(tmp_path, SETTINGS).trained_settings()
    path = _write_state(tmp_path, json.dumps({"settings": recorded, "finished_rounds": [0, 1]}))
    with pytest.raises(StippleInputError, match=r"state\.json: refusing to resume .*gamma_max was 0\.5, now 0\.7"):
        StateStub(tmp_path, {**SETTINGS, "gamma_max": 0.7})._load_state()
    assert json.loads(path.read_text())["settings"] == recorded


@pytest.mark.parametrize("text", ["{not json", "[]", '{"settings": {}}', '{"settings": [], "finished_rounds": []}',
                                  '{"settings": {}, "finished_rounds": 3}'])
@pytest.mark.parametrize("reader", ["_load_state", "resume_keys"])
def test_damaged_state_is_refused_naming_the_file(tmp_path, text, reader):
    path = _write_state(tmp_path, text)
    with pytest.raises(StippleInputError, match=rf"{path}.* is damaged .*Delete .*{PL_FOLDER} to run the loop again"):
        getattr(StateStub(tmp_path, SETTINGS), reader)()
    assert path.read_text() == text
