"""A Trainer for the toy MLP on a hand-made stream, built as the worker builds one, for tests
of what one step or a short run does."""
import torch

from models.augment import Augment
from pipeline.evaluation import no_evaluation
from pipeline.health import Probe
from pipeline.phases import build_phases
from pipeline.precision import choose_precision
from pipeline.strategy.single import SingleStrategy
from pipeline.tracking import Tracker
from pipeline.trainer import Trainer
from pipeline.worker import make_networks


def toy_trainer(cfg, stream, run_dir, strategy=None, evaluation=no_evaluation, tracker=None) -> Trainer:
    strategy = strategy or SingleStrategy(torch.device("cpu"))
    precision = choose_precision(cfg.train, strategy.device, image_model=False)
    G_ema = make_networks(cfg, strategy, precision, channels=2)
    augment = Augment()
    phases = build_phases(cfg, augment, precision, reduce=strategy.all_reduce_mean)
    return Trainer(cfg, strategy, G_ema, phases, stream, precision, augment, tracker or Tracker(), evaluation,
                   None, Probe(()), run_dir, channels=2)
