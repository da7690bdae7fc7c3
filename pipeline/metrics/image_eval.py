"""Image metrics of generated samples against a shard set, with cached real-data features.

    metrics = ImageMetrics(manifest_dir, cache_dir, metrics=("fid", "kid", "pr", "coverage"))
    scores = metrics.score(fake_images)   # float (N, C, H, W) in [-1, 1]

Feature space: "inception" (TF Inception pool3: the FID of papers, ~0.3-0.5 s per image on
a CPU) or "classifier" (the domain classifier's embedding: a fast proxy, comparable only
with itself). Keys name the space: fid_inception, kid_classifier, precision_classifier, ...
With any of fid, kid, pr: diversity_<space> and real_diversity_<space>, the RMS distance
between two generated (real) images' features (GaussianStats.spread), for the health monitor.
"coverage" always uses the classifier's predictions: classes_covered, classes_total, class_tv, and
for a conditional G class_match / class_match_min (share of images drawn for class K that the
classifier calls K: mean and worst class).
"cas" and "aug_gain" (conditional models: pipeline/metrics/cas.py) train the classifier's recipe
on the labelled generated images and test it on the shard set's held-out split.

Real features are computed once per (shard set and data version, resolution, count, extractor,
sample seed) and kept as .npy under `cache_dir`; so is the classifier. A new data version (after
`gantry shards add`) changes the key, so stale statistics are never reused.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from pipeline import storage
from pipeline.errors import GantryError
from pipeline.metrics import classifier as clf
from pipeline.metrics.cas import synthetic_data_scores
from pipeline.metrics.fid import GaussianStats, frechet_distance, kid
from pipeline.metrics.precision_recall import precision_recall
from pipeline.shards.manifest import Manifest, check_shard_bytes, load_manifest
from pipeline.shards.verify import read_samples

METRICS = ("fid", "kid", "pr", "coverage", "cas", "aug_gain")
LABELLED = {"cas", "aug_gain"}  # metrics that train on generated images with their labels
FEATURES = ("inception", "classifier")


def data_key(m: Manifest) -> str:
    """Names one exact shard set: its name, data version, resolution and every shard's hash."""
    digest = hashlib.sha256("".join(s.sha256 for s in m.shards).encode()).hexdigest()[:12]
    return f"{m.name}-v{m.version}-r{m.resolution}-{digest}"


def read_real(m: Manifest, n: int | None = None, seed: int = 0, heldout: bool = False,
              head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples drawn without replacement (seeded; all when n is None or >= the set), in shard
    order, as float (n, C, R, R) in [-1, 1] and int64 labels; from the held-out split with
    `heldout`; with `head` the first n, which reads only the shards that hold them. Of paired
    shards, the targets B. Shards are checked against the manifest; anything wrong is a
    GantryError, since statistics from damaged data mislead."""
    images, _, labels = _read(m, n, seed, heldout, head)
    return images, labels


def read_pairs(m: Manifest, n: int | None = None, seed: int = 0, heldout: bool = False,
               head: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As read_real, for paired shards: (A, B, labels), labels -1 where the shards have none."""
    b, a, labels = _read(m, n, seed, heldout, head)
    return a, b, labels


def _read(m: Manifest, n: int | None, seed: int, heldout: bool, head: bool):
    entries = m.heldout if heldout else m.shards
    total = sum(e.samples for e in entries)
    if n is None or n >= total:
        chosen = np.arange(total)
    else:
        chosen = np.arange(n) if head else np.sort(np.random.default_rng(seed).permutation(total)[:n])
    images, inputs, labels, start = [], [], [], 0
    for entry in entries:
        wanted = chosen[(chosen >= start) & (chosen < start + entry.samples)] - start
        start += entry.samples
        if not len(wanted):
            continue
        path = m.path(entry)
        data = storage.read_bytes(path)
        why = check_shard_bytes(entry, data)
        if why:
            raise GantryError(f"{path}: {why}")
        samples = read_samples(data)
        keys = list(samples)
        for i in wanted:
            try:
                img, a, label = m.decode_labelled(samples[keys[i]])
            except (ValueError, IndexError) as e:
                raise GantryError(f"{path}: sample {i}: {e}") from None
            if a is not None:
                inputs.append(a)
            images.append(img)
            labels.append(-1 if label is None else label)
    return _to_tensor(images), _to_tensor(inputs) if inputs else None, torch.tensor(labels, dtype=torch.int64)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


class ImageMetrics:
    def __init__(self, manifest: str | Path, cache_dir: str | Path, metrics=("fid", "coverage"),
                 features: str = "classifier", n_real: int | None = 10_000, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, pr_k: int = 3, classifier_steps: int = 1500, seed: int = 0,
                 device: str | torch.device = "cpu"):
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise GantryError(f"unknown image metric(s) {', '.join(sorted(unknown))}; expected some of {', '.join(METRICS)}")
        if features not in FEATURES:
            raise GantryError(f"unknown feature space {features!r}; expected one of {', '.join(FEATURES)}")
        self.manifest = load_manifest(manifest)
        self.cache_dir, self.metrics, self.features = str(cache_dir), tuple(metrics), features
        self.n_real, self.kid_subsets, self.kid_subset_size, self.pr_k = n_real, kid_subsets, kid_subset_size, pr_k
        self.classifier_steps, self.seed, self.device = classifier_steps, seed, device
        self.key = data_key(self.manifest)
        self._extractor = None
        self._classifier = None
        self._real: tuple[np.ndarray, GaussianStats] | None = None
        self._share: torch.Tensor | None = None  # real class frequencies (class_shares)

    @classmethod
    def from_config(cls, cfg, device="cpu") -> "ImageMetrics":
        """From a RunConfig: its `eval` section and its shard directory."""
        e = cfg.eval
        return cls(cfg.data.path, e.cache_dir or storage.join(cfg.train.out_dir, ".cache"), e.metrics, e.features,
                   e.n_real, e.kid_subsets, e.kid_subset_size, e.pr_k, e.classifier_steps, cfg.seed, device)

    # ---- feature extractors, built on first use -------------------------------------------

    @property
    def classifier(self) -> clf.ClassifierFeatures:
        if self._classifier is None:
            m = self.manifest
            self._classifier = clf.load_or_train(
                self.cache_dir, f"{self.key}-s{self.classifier_steps}", lambda: read_real(m, seed=self.seed),
                classes=max(m.classes) + 1, steps=self.classifier_steps, seed=self.seed)
        return self._classifier

    @property
    def extractor(self):
        if self._extractor is None:
            if self.features == "inception":
                from pipeline.metrics.inception import InceptionFeatures
                self._extractor = InceptionFeatures(self.device)
            else:
                self._extractor = self.classifier
        return self._extractor

    def real_features(self) -> np.ndarray:
        """(n_real, D) float32 features of the real set, from the cache when present."""
        n = min(self.n_real or self.manifest.samples, self.manifest.samples)
        url = storage.join(self.cache_dir, f"real-{self.key}-n{n}-s{self.seed}-{self.extractor.name}.npy")
        if storage.exists(url):
            return np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)
        images, _ = read_real(self.manifest, n, self.seed)
        feats = self.extractor(images).numpy().astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, feats)
        storage.write_bytes(url, buf.getvalue())
        return feats

    # ---- scoring --------------------------------------------------------------------------
    # score = score_extracted(extract(fake)); under several ranks each rank extracts its share
    # of the generated images and one rank scores the concatenation (see ImageEvaluator).

    def prepare(self) -> None:
        """Build (or load from the cache) everything scoring needs: the classifier, the feature
        extractor, the real statistics and class shares. One rank calls it first, so the others
        find the cache filled instead of training the same classifier at the same time."""
        if set(self.metrics) & {"fid", "kid", "pr"} and self._real is None:
            real = self.real_features()
            self._real = real, GaussianStats.of(real)
        if "coverage" in self.metrics:
            self.classifier  # noqa: B018 -- trains or loads it
            self.class_shares()

    def class_shares(self) -> torch.Tensor:
        """(classes,) float64: each class's share of the real set the metrics compare with."""
        if self._share is None:
            _, labels = read_real(self.manifest, self.n_real, self.seed)
            self._share = torch.bincount(labels, minlength=max(self.manifest.classes) + 1).double() / len(labels)
        return self._share

    def extract(self, fake: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """Generated images (N, C, R, R) in [-1, 1] (and the classes a conditional G drew them
        for) -> per-image features, predicted classes, and the labelled images themselves, as
        far as the chosen metrics need them."""
        m = self.manifest
        if fake.dim() != 4 or tuple(fake.shape[1:]) != (m.channels, m.resolution, m.resolution):
            raise GantryError(f"generated images are {tuple(fake.shape[1:])}, the shard set holds "
                              f"{(m.channels, m.resolution, m.resolution)}")
        fake = fake.detach().float().cpu().clamp(-1, 1)
        out: dict[str, np.ndarray] = {}
        if set(self.metrics) & {"fid", "kid", "pr"}:
            out["features"] = self.extractor(fake).numpy()
        if "coverage" in self.metrics:
            out["predicted"] = self.classifier.predict(fake).numpy()
        if LABELLED & set(self.metrics):
            if labels is None:
                raise GantryError(f"{' and '.join(sorted(LABELLED & set(self.metrics)))} need a class-conditional "
                                  f"model (model.conditional: true)")
            out["labelled"] = ((fake + 1) * 127.5).round().to(torch.uint8).numpy()
        if labels is not None:
            out["labels"] = labels.cpu().numpy().astype(np.int64)
        return out

    def score_extracted(self, parts: dict[str, np.ndarray]) -> dict[str, float]:
        self.prepare()
        out: dict[str, float] = {}
        if "features" in parts:
            real, real_stats = self._real
            feats, space = parts["features"], self.features
            fake_stats = GaussianStats.of(feats)
            if "fid" in self.metrics:
                out[f"fid_{space}"] = frechet_distance(real_stats, fake_stats)
            out[f"diversity_{space}"], out[f"real_diversity_{space}"] = fake_stats.spread, real_stats.spread
            if "kid" in self.metrics:
                out[f"kid_{space}"] = kid(real, feats, self.kid_subsets, self.kid_subset_size, seed=self.seed)
            if "pr" in self.metrics:
                pr = precision_recall(real, feats, k=self.pr_k)
                out[f"precision_{space}"], out[f"recall_{space}"] = pr["precision"], pr["recall"]
        if "predicted" in parts:
            out.update(clf.class_coverage(torch.from_numpy(parts["predicted"]), self._share))
            if "labels" in parts:
                out.update(clf.class_match(torch.from_numpy(parts["predicted"]), torch.from_numpy(parts["labels"])))
        if "labelled" in parts:
            fake = torch.from_numpy(parts["labelled"]).float() / 127.5 - 1
            out.update(synthetic_data_scores(
                self.manifest, lambda n, heldout=False: read_real(self.manifest, n, self.seed, heldout), fake,
                torch.from_numpy(parts["labels"]), self.metrics, self.classifier_steps, self.seed, self.cache_dir,
                self.key))
        return out

    def score(self, fake: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """Generated images (N, C, R, R) in [-1, 1] (with a conditional G's labels) -> the
        chosen metrics."""
        return self.score_extracted(self.extract(fake, labels))
