"""The checkpoints of SASSNet and adversarial confidence (through UnlabeledTrainingMixin) on stubs with nnU-Net's
checkpoint contract: network_weights stay the plain network's, the extra key round-trips the extra networks, their
optimizers and the step counter, resume refuses what it cannot continue."""
from __future__ import annotations

import pytest
import torch

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.semi_supervised.adversarial import ConfidenceNetwork, SDMDiscriminator, SDMHead
from nnunet_stipple.semi_supervised.settings import AdversarialConfidenceSettings, SASSNetSettings
from nnunet_stipple.trainers.adversarial_confidence import AdversarialConfidenceMixin
from nnunet_stipple.trainers.adversarial_confidence import CHECKPOINT_KEY as CONFIDENCE_KEY
from nnunet_stipple.trainers.sassnet import CHECKPOINT_KEY as SASSNET_KEY
from nnunet_stipple.trainers.sassnet import SASSNetMixin


class NnUNetCheckpointStub:
    """nnUNetTrainer's save/load contract: network_weights <-> self.network, plus other keys."""
    local_rank, disable_checkpointing = 0, False
    device = torch.device("cpu")

    def __init__(self, value: float):
        self.network = torch.nn.Conv2d(2, 3, 1)
        _fill(self.network, value)
        self.ssl_step = 0
        self.logged = []

    def save_checkpoint(self, filename):
        torch.save({"network_weights": self.network.state_dict(), "current_epoch": 3}, filename)

    def load_checkpoint(self, filename_or_checkpoint):
        ckpt = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        self.network.load_state_dict(ckpt["network_weights"])

    def print_to_log_file(self, *args, **kwargs):
        self.logged.append(" ".join(map(str, args)))


def _fill(module, value):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def _adam_step(module, optimizer):
    optimizer.zero_grad()
    sum(p.sum() for p in module.parameters()).backward()
    optimizer.step()


class SASSNetStub(SASSNetMixin, NnUNetCheckpointStub):
    def __init__(self, value: float):
        super().__init__(value)
        self.ssl = SASSNetSettings()
        self.discriminator_grad_scaler = None
        self.sdm_head = SDMHead(torch.nn.Conv2d, 3, 2)
        self.discriminator = SDMDiscriminator(torch.nn.Conv2d, 2, 2, (16, 16), features=2)
        _fill(self.sdm_head, value)
        _fill(self.discriminator, value)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=1e-4)

    def extra_modules(self):
        return self.sdm_head, self.discriminator, self.discriminator, self.discriminator_optimizer


class ConfidenceStub(AdversarialConfidenceMixin, NnUNetCheckpointStub):
    def __init__(self, value: float):
        super().__init__(value)
        self.ssl = AdversarialConfidenceSettings()
        self.confidence_grad_scaler = None
        self.confidence_network = ConfidenceNetwork(torch.nn.Conv2d, 5, (16, 16), features=2)
        _fill(self.confidence_network, value)
        self.confidence_optimizer = torch.optim.Adam(self.confidence_network.parameters(), lr=1e-4)

    def extra_modules(self):
        return self.confidence_network, self.confidence_network, self.confidence_network, self.confidence_optimizer


@pytest.mark.parametrize("stub, key", [(SASSNetStub, SASSNET_KEY), (ConfidenceStub, CONFIDENCE_KEY)])
def test_round_trip_of_the_extra_key(tmp_path, stub, key):
    trainer = stub(1.0)
    first, _, stepped, optimizer = trainer.extra_modules()
    _adam_step(stepped, optimizer)
    trainer.ssl_step = 7
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]           # no temporary file left
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    # network_weights: the plain network only, as nnU-Net wrote them (what nnUNetv2_predict loads)
    assert ckpt["network_weights"].keys() == torch.nn.Conv2d(2, 3, 1).state_dict().keys()
    assert ckpt["current_epoch"] == 3 and ckpt[key]["step"] == 7 and ckpt[key]["settings"] == trainer.ssl.to_json()

    resumed = stub(5.0)
    resumed.load_checkpoint(str(path))
    assert resumed.ssl_step == 7 and float(resumed.network.weight.detach()[0, 0, 0, 0]) == 1.0
    for a, b in zip(trainer.extra_modules()[:3], resumed.extra_modules()[:3]):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    saved, loaded = trainer.extra_modules()[3].state_dict(), resumed.extra_modules()[3].state_dict()
    assert loaded["state"][0]["step"] == saved["state"][0]["step"] == 1 and \
        torch.equal(loaded["state"][0]["exp_avg"], saved["state"][0]["exp_avg"])


def test_sassnet_refuses_to_resume_a_checkpoint_without_its_key(tmp_path):
    path = tmp_path / "plain.pth"
    NnUNetCheckpointStub(2.0).save_checkpoint(str(path))
    trainer = SASSNetStub(0.0)
    with pytest.raises(StippleInputError, match="not written by nnUNetTrainer_SASSNet"):
        trainer.load_checkpoint(str(path))
    assert float(trainer.network.weight.detach()[0, 0, 0, 0]) == 0.0           # refused before anything was loaded


def test_adversarial_confidence_starts_a_fresh_confidence_network_from_a_plain_checkpoint(tmp_path):
    path = tmp_path / "plain.pth"
    NnUNetCheckpointStub(2.0).save_checkpoint(str(path))
    trainer = ConfidenceStub(0.0)
    trainer.ssl_step = 4
    trainer.load_checkpoint(str(path))
    assert float(trainer.network.weight.detach()[0, 0, 0, 0]) == 2.0 and trainer.ssl_step == 0
    assert "no confidence network" in trainer.logged[-1]


def test_nothing_is_added_before_the_extra_networks_exist(tmp_path):
    trainer = ConfidenceStub(1.0)
    trainer.confidence_network = None
    trainer.save_checkpoint(str(tmp_path / "c.pth"))
    assert CONFIDENCE_KEY not in torch.load(tmp_path / "c.pth", map_location="cpu", weights_only=False)
