"""Profiles: one dataclass tree fixes data size, image size, architectures and budgets.

Three profiles serve three audiences with the same notebooks:

* ``smoke`` -- a tiny phantom; the tests execute every notebook with it in minutes.
* ``cpu``   -- the default: a phantom of a few hundred patients at 64 px; a newcomer's first run on a
  2-core machine, where the papers' claims should hold qualitatively.
* ``paper`` -- ChestX-ray14 at 256 px with the published hyper-parameters (``docs/papers.md``); needs a GPU.

``load_profile("cpu", image_size=32, **{"verification.max_epochs": 2})`` overrides any field: a
plain name addresses a field of :class:`DataConfig` or of the profile itself, ``section.field``
addresses a field of one section. ``max_steps=N`` makes a dry run of the profile (:func:`dry_run`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

PROFILE_NAMES = ("smoke", "cpu", "paper")


@dataclass(frozen=True)
class DataConfig:
    image_size: int
    #: phantom generated when no data folder is given (ignored on real data)
    phantom_patients: int
    phantom_max_followups: int
    #: share of the train/val patients held out for validation, patient-wise, when the validation split
    #: is seeded (no official lists, or ``official_train_count`` None)
    val_fraction: float = 0.125
    #: with the official lists: the first this many entries of train_val_list.txt train, the rest
    #: validate (the official code's rule: 75,708 of 86,524; the list is sorted by patient)
    official_train_count: int | None = None
    #: pair purposes (``Workspace.pairs``) that read PriCheXy-Net's published pair files instead of
    #: drawing pairs, on real ChestX-ray14 (never on a phantom, whose image names they do not match)
    official_pairs_for: tuple[str, ...] = ()
    #: dry runs only (``run_all.sh --max-steps``): every training and evaluation loop stops after this
    #: many batches (see ``dry_run``); 0, the default, caps nothing. Part of the data section, so a
    #: capped run's checkpoints are never taken for a real run's.
    max_steps: int = 0
    #: share of patients for testing when the folder has no official split lists (real: 25,596/112,120)
    test_fraction: float = 0.228
    #: decode workers for the image cache
    workers: int = 2
    #: independent training runs (seeds, settings) trained side by side on a CPU, each in its own process
    #: with an equal share of the threads (cxrlib.parallel); 1 trains them one after another
    run_processes: int = 1


@dataclass(frozen=True)
class VerificationConfig:
    """The siamese network of "Is Medical Chest X-ray Data Anonymous?"."""

    backbone: str
    pretrained: bool
    features: int = 128
    batch_size: int = 32
    lr: float = 1e-4
    max_epochs: int = 100
    patience: int = 5
    train_pairs: int = 792_294
    val_pairs: int = 50_000
    test_pairs: int = 100_000
    #: independent training runs for mean +- std (the papers use 10)
    runs: int = 10


@dataclass(frozen=True)
class RetrievalConfig:
    backbone: str
    pretrained: bool
    embedding_dim: int = 128
    memory_size: int = 128
    batch_size: int = 32
    images_per_patient: int = 8
    max_lr: float = 0.158489
    momentum: float = 0.9
    weight_decay: float = 1e-5
    frozen_epochs: int = 30
    unfrozen_epochs: int = 50
    color_jitter: float = 0.4
    #: head: concat pooling to pool_size x pool_size, 1x1 bottleneck, hidden FC (authors' code: 5, 100, 2048)
    pool_size: int = 5
    bottleneck_channels: int = 100
    hidden: int = 2048
    #: dropout before the hidden and the last layer; a few hundred phantom patients learn far
    #: faster without it (P@1 0.45 vs 0.35 after six epochs, convnet at 64 px)
    head_dropout: tuple[float, float] = (0.5, 0.25)


@dataclass(frozen=True)
class ClassifierConfig:
    """The 14-finding classifier (CheXNet reproduction used by PriCheXy-Net)."""

    backbone: str
    pretrained: bool
    input_size: int = 224
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_epochs: int = 100
    patience: int = 3
    #: epochs without a lower validation loss before the learning rate is divided by 10 (CheXNet: 0)
    lr_patience: int = 0
    #: "sgd" (CheXNet: momentum, weight decay) or "adam" (same lr and weight decay), for training from
    #: scratch on a small phantom, where SGD at lr 0.01 stays at the label priors
    optimizer: str = "sgd"


@dataclass(frozen=True)
class AnonymizationConfig:
    """PriCheXy-Net, Privacy-Net and DP-Pix."""

    #: deformation strength as in the paper at 256 px; a pixel moves at most mu * 255 / 2 px at every
    #: image size (cxrlib.anonymize.flow_field states the rule)
    mu_values: tuple[float, ...] = (0.001, 0.005, 0.01)
    generator_features: int = 32
    generator_poolings: int = 4
    #: the paper's Gaussian, in pixels at every image size
    smoothing_kernel: int = 9
    smoothing_sigma: float = 2.0
    pretrain_epochs: int = 200
    pretrain_lr: float = 1e-4
    batch_size: int = 64
    adversarial_epochs: int = 250
    #: epochs without a lower validation total loss before the adversarial training stops (None: all
    #: adversarial_epochs, as published)
    adversarial_patience: int | None = None
    #: the generator's learning rate (Adam)
    lr: float = 1e-4
    #: the in-loop adversaries' own: the siamese network's (Adam) and the classifier's (SGD), as published
    siamese_lr: float = 1e-4
    classifier_lr: float = 1e-4
    w_ac: float = 1.0
    w_ver: float = 1.0
    #: also update the siamese network and classifier on detached deformed images each iteration
    update_adversaries: bool = True
    train_pairs: int = 10_000
    #: training pairs drawn (without replacement) for each epoch from the train_pairs (None: all of them
    #: every epoch, as published); fewer than train_pairs, so the adversaries see new pairs each epoch
    pairs_per_epoch: int | None = None
    val_pairs: int = 2_000
    test_pairs: int = 5_000
    privacy_net_features: int = 16
    privacy_net_poolings: int = 3
    dp_pix_b: tuple[int, ...] = (2, 4, 8)
    dp_pix_eps: float = 0.1
    dp_pix_m: float = 1.0


@dataclass(frozen=True)
class EvaluationConfig:
    #: independently re-trained siamese attackers per anonymizer
    attack_runs: int = 10
    bootstrap_samples: int = 1000
    #: the attack's pairs, as in PriCheXy-Net's SNN re-training (train and val anonymized on both sides)
    attack_train_pairs: int = 10_000
    attack_val_pairs: int = 2_000
    attack_test_pairs: int = 5_000
    #: the fresh attacker (PriCheXy-Net's config_retrainSNN.json): the verification network's
    #: architecture (features) with this backbone and training recipe
    attack_backbone: str = "resnet50"
    attack_pretrained: bool = True
    attack_lr: float = 1e-4
    attack_batch_size: int = 32
    attack_max_epochs: int = 100
    attack_patience: int = 5


#: the U-Net's learning-rate schedules (:attr:`SynthesisConfig.unet_lr_schedule`)
UNET_LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class SynthesisConfig:
    """Latent diffusion; the paper leaves most of these unpublished (see docs/papers.md section 4)."""

    latent_channels: int = 4
    #: side of the pixel patches the autoencoder takes as channels (1: it starts at full resolution)
    autoencoder_patch_size: int = 1
    autoencoder_channels: tuple[int, ...] = (64, 128, 256)
    autoencoder_epochs: int = 100
    autoencoder_lr: float = 1e-4
    kl_weight: float = 1e-6
    #: weight of an edge term in the autoencoder's loss: L1 between the image gradients of the
    #: reconstruction and of the image (0: L1 + KL only), which penalizes blurred thin structures
    autoencoder_edge_weight: float = 0.0
    unet_channels: tuple[int, ...] = (128, 256, 512)
    unet_layers_per_block: int = 2
    unet_epochs: int = 500
    #: early-stopping patience (epochs) of both the autoencoder and the U-Net
    patience: int = 20
    #: share of the validation loss an epoch must gain to reset that patience (0: any decrease)
    min_improvement: float = 0.0
    unet_lr: float = 1e-4
    #: "constant", or "cosine": the learning rate warms up linearly over ``unet_warmup_steps`` and then
    #: decays to 0 along a half cosine at the end of ``unet_epochs``, which the U-Net then always runs
    #: (a fixed budget: no early stopping, the epoch with the lowest validation loss is kept)
    unet_lr_schedule: str = "constant"
    unet_warmup_steps: int = 0
    #: how the U-Net's batches are drawn: 0 uniformly; 1 each image with a weight of the inverse
    #: prevalence of its rarest label (No Finding counts as a label), so that every finding is about as
    #: frequent as every other; values between (0.5: the square root) lean the draw less far
    unet_class_balance: float = 0.0
    #: decay of the exponential moving average of the U-Net's weights that is validated and kept
    #: (0: the weights of the last step)
    unet_ema_decay: float = 0.0
    batch_size: int = 32
    train_timesteps: int = 1000
    sampling_steps: int = 50
    guidance_scale: float = 3.0
    #: classifier seeds of notebook 04's gap decomposition (:func:`cxrlib.synthesis.gap_decomposition`):
    #: each trains a classifier on real, on reconstructed and on synthetic images
    decomposition_seeds: int = 3
    #: probability of dropping the condition during training (classifier-free guidance)
    condition_dropout: float = 0.1
    #: min-SNR loss weighting of the U-Net (0: plain epsilon MSE)
    min_snr_gamma: float = 5.0
    #: samples per finding (and No Finding) for the per-class grid and within-class diversity
    samples_per_class: int = 1000
    #: synthetic training images for the synthetic-only classifier, drawn with the real training
    #: split's label vectors; 0 means as many as the real training split
    synthetic_images: int = 0
    #: nearest real training images (by retrieval embedding) the sampler checks with the siamese network
    sampler_neighbours: int = 5
    #: share of real validation images (patients unseen in training) that the sampler's thresholds
    #: would wrongly reject; fixes the thresholds
    sampler_fpr: float = 0.05
    max_retries: int = 10

    def __post_init__(self):
        # checked here, not when the U-Net starts: a bad value must not cost the autoencoder's training first
        if self.unet_lr_schedule not in UNET_LR_SCHEDULES:
            raise ValueError(f"unet_lr_schedule must be one of {UNET_LR_SCHEDULES}, got {self.unet_lr_schedule!r}")
        if self.unet_class_balance < 0:
            raise ValueError(f"unet_class_balance must be 0 or more, got {self.unet_class_balance}")


@dataclass(frozen=True)
class TransferConfig:
    """Notebook 06's transfer test (:mod:`cxrlib.transfer`): the siamese network, the retrieval network
    and the classifier trained on the real sample (data/chestxray14-sample) from scratch and fine-tuned
    from the phantom's models, in ``folds`` folds by patient. Each network keeps its own section's recipe
    (architecture, optimizer, batch size, patience); these fields only cap what one fold may cost, the
    same for both starts. None keeps the section's own value."""

    folds: int = 5
    #: the siamese network's epoch cap (its section's ``max_epochs``) and training pairs per epoch
    #: (``train_pairs``; fewer when the fold's patients allow fewer)
    verification_epochs: int | None = None
    verification_pairs: int | None = None
    #: the retrieval network's epochs after its frozen ones (its section's ``unfrozen_epochs``)
    retrieval_epochs: int | None = None
    #: the classifier's epoch cap (its section's ``max_epochs``)
    classifier_epochs: int | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    data: DataConfig
    verification: VerificationConfig
    retrieval: RetrievalConfig
    classifier: ClassifierConfig
    anonymization: AnonymizationConfig = field(default_factory=AnonymizationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    #: the phantom's seed, part of the data (its folder name carries it); training, pairs and sampling
    #: draw from the workspace's seed instead (``run_all.sh --seed``), so one phantom serves many seeds
    seed: int = 42

    @property
    def image_size(self) -> int:
        return self.data.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """Short hash of the named sections (all when none), to key artifacts by what they depend on."""
        full = self.to_dict()
        chosen = {name: full[name] for name in sections} if sections else full
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:10]


def _paper() -> Profile:
    # Retrieval trains at the profile's 256 px, not at the official code's native 1024 px: one cache
    # serves every model, and ResNet-50 at 1024 px needs 16 times the activations of 256 px
    # (benchmarks/bench_scale.py measures both); the official test script's 1024 -> 224 sweep shows
    # retrieval holding up at lower resolutions.
    return Profile(
        name="paper",
        # the official split and validation rule; PriCheXy-Net, its baselines and the re-training
        # attack use PriCheXy-Net's own pair files (the published comparison was made on them)
        data=DataConfig(image_size=256, phantom_patients=30_805, phantom_max_followups=184, workers=8,
                        official_train_count=75_708, official_pairs_for=("anonymization",)),
        verification=VerificationConfig(backbone="resnet50", pretrained=True),
        retrieval=RetrievalConfig(backbone="resnet50", pretrained=True),
        classifier=ClassifierConfig(backbone="densenet121", pretrained=True),
    )


def _cpu() -> Profile:
    # Sized from measured 2-core training throughput (ResNet-18 at 64 px: ~186 img/s) for a first run
    # of at most 45 minutes on 2 cores (the last run's times: results/cpu/timings.tsv).
    return Profile(
        name="cpu",
        # 2,000 patients (about 5,200 images): with 400, the classifier saw a handful of examples of most
        # findings and the siamese network a few hundred identities (measured at 64 px, 12 epochs, on
        # phantom version 1: siamese AUC 0.95 with 1,500 or 2,000 patients; 2,000 for the classifier's
        # rarer findings). On version 3 (acquisition varied per scan, framed as real radiographs) the
        # siamese AUC over seeds 42-44 is 0.918 / 0.911 / 0.907 (benchmarks/results/fair_test_cpu_*.json)
        # the three seeds at once, one thread each: on 2 cores they train faster together than one after
        # another with 2 threads (two processes would leave the third seed alone on one thread;
        # benchmarks/bench_cpu_paths.py --processes)
        data=DataConfig(image_size=64, phantom_patients=2000, phantom_max_followups=8, run_processes=3),
        # convnet, not ResNet-18: five times cheaper per image on a CPU (2.6 vs 12.5 ms per training
        # image, measured), which three verification runs and retrieval need to fit the notebook's
        # few minutes. Adam at 3e-3: 600-1,100 steps are all the budget allows (test AUC 0.95 after 12
        # epochs vs 0.91 at 1e-3 after 8, measured). 800 validation pairs and patience 4: with 400 and
        # 3, one of three seeds stopped at epoch 3 on a noisy validation loss (test AUC 0.930 against
        # 0.940 and 0.965)
        verification=VerificationConfig(
            backbone="convnet_spatial", pretrained=False, lr=3e-3, max_epochs=15, patience=4,
            train_pairs=2400, val_pairs=800, test_pairs=1000, runs=3,
        ),
        # no colour jitter or head dropout: on a few hundred patients both slow learning more than
        # they regularize (8 epochs: P@1 0.21 with jitter 0.4, 0.56 without; measured on the earlier
        # 400-patient phantom)
        retrieval=RetrievalConfig(
            backbone="convnet", pretrained=False, max_lr=0.05, frozen_epochs=0, unfrozen_epochs=8,
            pool_size=2, bottleneck_channels=64, hidden=512, head_dropout=(0.0, 0.0), color_jitter=0.0,
        ),
        classifier=ClassifierConfig(
            # measured on the earlier 400-patient phantom, from scratch: SGD at lr 0.01 (CheXNet) stays at
            # the label priors (test mean AUC 0.54 for ResNet-18 after 25 epochs); Adam learns (0.69)
            backbone="convnet_spatial", pretrained=False, input_size=64, batch_size=32, optimizer="adam",
            lr=1e-3, max_epochs=30, patience=6, lr_patience=2,
        ),
        anonymization=AnonymizationConfig(
            # the paper's geometry in pixels (mu 0.005 / 0.01: 0.64 / 1.28 px, kernel 9, sigma 2;
            # docs/decisions.md); not mu 0.001, since each mu costs a generator and three attackers
            mu_values=(0.005, 0.01), generator_features=16,
            # the published schedule at a CPU's budget: a fixed 10 epochs, the generator with the lowest
            # validation total kept (no early stopping). Epochs of 640 pairs (40 steps) drawn from 6,400
            # distinct ones, so the in-loop siamese network sees each pair about once and cannot memorize
            # them; it and the classifier at the published 1e-4. The generator keeps a 30x larger learning
            # rate than the paper's (400 steps, not ~39,000; measured on the 400-patient phantom: lr 1e-3,
            # batch 32 barely moved the frozen siamese AUC, lr 3e-3 with batches of 16 lowered it)
            pretrain_epochs=3, batch_size=16, adversarial_epochs=10, adversarial_patience=None, lr=3e-3,
            train_pairs=6400, pairs_per_epoch=640,
            # DP-Pix at b 4 and 8: at b 2 the noise scale (m / (b^2 eps) = 2.5 on [0, 1]) leaves nothing of
            # the image, and each setting costs notebook 03 three attackers
            val_pairs=600, test_pairs=1000, dp_pix_b=(4, 8),
        ),
        # the re-training attack: the verification recipe (convnet, Adam 3e-3), 3 runs per anonymizer,
        # each stopped when its validation loss has not fallen for 3 epochs; the cap of 25 is a safety net
        # (with a cap of 5 and patience 2, 7 of 8 attackers were still improving at the cap). 1,000
        # training pairs, not 1,600: on the phantom of commit 13126f2 an epoch of 1,600 pairs took ~9 s
        # with its validation (2 runs x 5 epochs: ~90 s per anonymizer). With 1,000 pairs the attacker on
        # original images stopped after 8 epochs (best 5, test AUC 0.902; 1,600 pairs and a cap of 5 gave
        # 0.905 and 0.923), measured on the phantom of renderer 3a159387 (2,000 patients, 64 px), so about
        # 45 s per attacker on an unloaded 2-core machine, 7 anonymizers x 3 runs about 16 minutes
        evaluation=EvaluationConfig(
            attack_runs=3, attack_train_pairs=1000, attack_val_pairs=300, attack_test_pairs=800,
            attack_backbone="convnet_spatial", attack_pretrained=False, attack_lr=3e-3, attack_max_epochs=25,
            attack_patience=3,
        ),
        # 64 px -> 16x16x4 latents. The autoencoder takes 2x2 pixel patches as 4 channels and runs at 32 and
        # 16 px: against widths (8, 16, 32) from 64 px, validation L1 after 5 epochs 0.081 for both, 1.85x the
        # training images/s on one thread (both measured on the 2,000-patient phantom). Both parts train until
        # their validation loss has flattened: 3 epochs in a row without a gain of 1 % (min_improvement) on
        # the last epoch that made one. The U-Net's validation loss is that of an exponential moving average
        # of its weights (decay 0.999, about 5 epochs): measured with patience 3 on one thread, the plain
        # weights' loss was noisy enough to stop at epoch 23 (best 20: 0.0544), while the average's fell
        # smoothly past it (0.0536 at epoch 21, 0.0490 at 41; by that curve the 1 % rule stops it at epoch
        # 33). The autoencoder stopped after 9 epochs (best 6: 0.0778). Dividing the learning rate by 10 on a
        # plateau stopped both sooner but higher (autoencoder 0.068 after 11 epochs; U-Net at batch 32 0.064
        # after 9). Guidance, measured on an earlier 400-patient phantom: synthetic-only classifier test mean
        # AUC 0.49 at scale 1; 0.54-0.62 at 3, 0.52-0.63 at 6, 0.60 at 9, 0.58 at 12 (two trained models,
        # several sampling seeds): above 1, within the run-to-run spread. As many synthetic training images as
        # real ones, as the paper has it: the real classifier trained on a random 1,500 of the real training
        # images scored 0.789 against 0.850 with all, so a gap measured with 1,500 synthetic images measured
        # the smaller set too.
        synthesis=SynthesisConfig(
            latent_channels=4, autoencoder_patch_size=2, autoencoder_channels=(16, 32), autoencoder_epochs=40,
            autoencoder_lr=2e-3, unet_channels=(32, 64, 64), unet_layers_per_block=1, unet_epochs=60,
            unet_lr=1e-3, unet_ema_decay=0.999, patience=3, min_improvement=0.01, batch_size=16,
            sampling_steps=10, samples_per_class=6, max_retries=5, decomposition_seeds=1,
        ),
        # the transfer test of notebook 06 on the real sample (800 training and validation images per fold),
        # in CPU seconds of one thread on an AMD EPYC (2 cores shared with other work): at the sections' own
        # budgets one fold of one start costs about 17 s per siamese epoch of 2,400 pairs (up to 15), 2 s per
        # retrieval epoch (8) and 2.2 s per classifier epoch (up to 30), some 3,000 s for 5 folds x 2 starts,
        # against the 400 s the cpu run has to spare. Epochs and pairs were cut, the 5 folds kept: a fold of
        # one start now costs 11-17 s (siamese: 3 epochs of 600 pairs), 5-7 s (retrieval: 3 epochs) and
        # 7-9 s (classifier: 4 epochs), the whole test 288 s, the notebook 305 s (343 s wall). From scratch
        # the networks are short of what the sample can teach (siamese AUC 0.64, 3 epochs against 2 epochs
        # of 2,400 pairs: 0.73 on one fold); both starts get the same budget.
        transfer=TransferConfig(folds=5, verification_epochs=3, verification_pairs=600, retrieval_epochs=3,
                                classifier_epochs=4),
    )


def _smoke() -> Profile:
    return Profile(
        name="smoke",
        data=DataConfig(image_size=32, phantom_patients=100, phantom_max_followups=4, val_fraction=0.2,
                        workers=1),
        verification=VerificationConfig(
            backbone="convnet", pretrained=False, max_epochs=1, patience=1,
            train_pairs=64, val_pairs=32, test_pairs=32, runs=2, batch_size=16,
        ),
        retrieval=RetrievalConfig(
            backbone="convnet", pretrained=False, batch_size=16, images_per_patient=4, max_lr=0.05,
            frozen_epochs=0, unfrozen_epochs=1, pool_size=1, bottleneck_channels=16, hidden=64,
            head_dropout=(0.0, 0.0),
        ),
        classifier=ClassifierConfig(
            backbone="convnet", pretrained=False, input_size=32, batch_size=16, optimizer="adam", lr=1e-3,
            max_epochs=1, patience=1,
        ),
        anonymization=AnonymizationConfig(
            mu_values=(0.005, 0.01), generator_features=8, generator_poolings=2, pretrain_epochs=1, batch_size=16,
            adversarial_epochs=2, train_pairs=64, pairs_per_epoch=32, val_pairs=32, test_pairs=32, dp_pix_b=(4,),
        ),
        evaluation=EvaluationConfig(
            attack_runs=1, bootstrap_samples=100, attack_train_pairs=48, attack_val_pairs=16,
            attack_test_pairs=32, attack_backbone="convnet", attack_pretrained=False, attack_batch_size=16,
            attack_max_epochs=2, attack_patience=1,
        ),
        synthesis=SynthesisConfig(
            latent_channels=4, autoencoder_channels=(8, 16), autoencoder_epochs=1, autoencoder_lr=2e-3,
            unet_channels=(16, 32), unet_layers_per_block=1, unet_epochs=1, unet_lr=1e-3, unet_ema_decay=0.9,
            sampling_steps=4, samples_per_class=2, batch_size=16, max_retries=2, decomposition_seeds=1,
        ),
        # the fewest folds a k-fold has; every network one epoch, as in its section
        transfer=TransferConfig(folds=2),
    )


_BUILDERS = {"smoke": _smoke, "cpu": _cpu, "paper": _paper}

#: a dry run's batch size: the paper's (up to 64 pairs of 256 px images through two ResNet-50
#: branches and a DenseNet-121) would not fit a 24 GiB, 2-core machine in minutes; 4 still passes
#: every code path, batch norm included
DRY_RUN_BATCH = 4


def dry_run(profile: Profile, max_steps: int) -> Profile:
    """``profile`` with every loop capped, to prove on a CPU that its full-size models and notebooks run.

    Architectures, image sizes and all other settings stay as they are; what changes: every training
    runs one epoch (both retrieval phases when the profile has both); loops over runs, mu values,
    DP-Pix cells, DDIM steps, sampler retries, the gap decomposition's classifier seeds and transfer
    folds (at least two) run at most ``max_steps`` times; batches are capped at :data:`DRY_RUN_BATCH`
    (a warning names the ones that were); samples per class and synthetic images are as few as fill
    ``max_steps`` batches.
    ``Workspace`` (and :func:`cxrlib.transfer.transfer_test`, each fold's parts) caps every split and
    the pairs to ``max_steps`` batches, so every epoch and evaluation pass is at most ``max_steps`` steps.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    batch = DRY_RUN_BATCH
    capped = []

    def small(section: str, name: str) -> int:
        value = getattr(getattr(profile, section), name)
        if value > batch:
            capped.append(f"{section}.{name} {value}")
        return min(value, batch)

    v, r, c = profile.verification, profile.retrieval, profile.classifier
    a, e, s = profile.anonymization, profile.evaluation, profile.synthesis
    sections = {
        "data": dataclasses.replace(profile.data, max_steps=max_steps),
        "verification": dataclasses.replace(v, max_epochs=1, runs=min(v.runs, max_steps),
                                            batch_size=small("verification", "batch_size")),
        "retrieval": dataclasses.replace(r, frozen_epochs=min(r.frozen_epochs, 1), unfrozen_epochs=1,
                                         batch_size=small("retrieval", "batch_size"),
                                         images_per_patient=min(r.images_per_patient, batch)),
        "classifier": dataclasses.replace(c, max_epochs=1, batch_size=small("classifier", "batch_size")),
        "anonymization": dataclasses.replace(a, pretrain_epochs=1, adversarial_epochs=1,
                                             mu_values=a.mu_values[-max_steps:],
                                             dp_pix_b=a.dp_pix_b[-max_steps:],
                                             batch_size=small("anonymization", "batch_size")),
        "evaluation": dataclasses.replace(e, attack_runs=min(e.attack_runs, max_steps), attack_max_epochs=1,
                                          attack_batch_size=small("evaluation", "attack_batch_size")),
        "synthesis": dataclasses.replace(s, autoencoder_epochs=1, unet_epochs=1,
                                         sampling_steps=min(s.sampling_steps, max_steps),
                                         max_retries=min(s.max_retries, max_steps),
                                         decomposition_seeds=min(s.decomposition_seeds, max_steps),
                                         samples_per_class=1, synthetic_images=max_steps * batch,
                                         batch_size=small("synthesis", "batch_size")),
        # the transfer test's k-fold loop: two folds, the fewest a k-fold has
        "transfer": dataclasses.replace(profile.transfer, folds=max(2, min(profile.transfer.folds, max_steps)),
                                        verification_epochs=1, retrieval_epochs=1, classifier_epochs=1),
    }
    if capped:
        warnings.warn(f"dry run ({max_steps} steps per loop): batch sizes capped at {batch} "
                      f"(profile '{profile.name}': {', '.join(capped)})", stacklevel=3)
    return dataclasses.replace(profile, **sections)


def load_profile(name: str = "cpu", **overrides: Any) -> Profile:
    """The named profile with keyword overrides (``image_size=32``, ``**{"verification.runs": 1}``)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}")
    profile = _BUILDERS[name]()
    section_updates: dict[str, dict[str, Any]] = {}
    top_updates: dict[str, Any] = {}
    for key, value in overrides.items():
        section, _, attr = key.rpartition(".")
        if section:
            if not hasattr(profile, section) or not dataclasses.is_dataclass(getattr(profile, section)):
                raise ValueError(f"unknown profile section {section!r} in override {key!r}")
            _check_field(getattr(profile, section), attr, key)
            section_updates.setdefault(section, {})[attr] = value
        elif attr in {f.name for f in dataclasses.fields(DataConfig)}:
            section_updates.setdefault("data", {})[attr] = value
        else:
            _check_field(profile, attr, key)
            top_updates[attr] = value
    max_steps = section_updates.get("data", {}).pop("max_steps", 0)
    for section, updates in section_updates.items():
        top_updates[section] = dataclasses.replace(getattr(profile, section), **updates)
    profile = dataclasses.replace(profile, **top_updates)
    return dry_run(profile, max_steps) if max_steps else profile


def _check_field(obj: Any, attr: str, key: str) -> None:
    if attr not in {f.name for f in dataclasses.fields(obj)}:
        raise ValueError(f"unknown profile field {key!r} (no field {attr!r} in {type(obj).__name__})")
