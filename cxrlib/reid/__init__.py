"""Re-identification of patients from their chest radiographs (Packhäuser et al., Sci. Rep. 2022), in
three modules: :mod:`~cxrlib.reid.verification`, :mod:`~cxrlib.reid.retrieval` and
:mod:`~cxrlib.reid.identity` (what identifies a patient); their names are importable from here.

Two attacks on held-out patients:

* **verification** -- a siamese network decides whether two radiographs show the same patient
  (:func:`train_verification`, :func:`pair_scores`, several seeds with :func:`verification_runs`,
  several experiments' runs in one pool with :func:`verification_experiments`);
* **retrieval** -- an embedding network ranks a gallery by identity (:func:`train_retrieval`,
  :func:`evaluate_retrieval`), trained with a contrastive loss over a cross-batch memory on batches
  grouped by patient (:class:`PatientBlockSampler`).

And what the paper shows with them: blacking out burned-in text does not help
(:func:`black_out_boxes`, :func:`text_box_effect`); a linkage attack returns a query's nearest gallery
images in the retrieval embedding (:func:`linkage_attack`, :func:`linkage_hit_rates`); identity survives
years between scans (:func:`auc_by_gap`); the training-free attacks of :mod:`cxrlib.attacks` (pixel
correlation, block means, the intensity histogram, the image's mean and standard deviation), beside the
trained networks on the same pairs, show what carries identity (:func:`identity_cues`).

Evaluation works on :class:`Images`, the uint8 pixels of a set of named images, so that any anonymizer
(``anonymizer(images) -> images`` on float (B, 1, H, W) in [0, 1]) can be put in front of a model.
"""

from __future__ import annotations

from cxrlib.data.images import Images, black_out_boxes
from cxrlib.models.retrieval import RetrievalNetwork
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.reid.retrieval import (Anonymizer, embed_images, PatientBlockSampler, RetrievalLoss,
                                   build_retrieval_network, retrieval_augmentation, train_retrieval,
                                   evaluate_retrieval, retrieval_embeddings, normalized, nearest_matches,
                                   linkage_queries, linkage_attack, linkage_hit_rates)
from cxrlib.reid.verification import (RUN_METRICS, verification_loss, train_verification, pair_scores,
                                      run_checkpoint, VerificationExperiment, verification_experiments,
                                      verification_runs, verification_run, text_box_effect)
from cxrlib.reid.identity import (TRAINING_FREE_BASELINES, IDENTITY_CUES, identity_cues, pair_gaps,
                                  AGE_GAP_BINS, auc_by_gap)

__all__ = ['AGE_GAP_BINS', 'Anonymizer', 'IDENTITY_CUES', 'Images', 'PatientBlockSampler', 'RUN_METRICS',
    'RetrievalLoss', 'RetrievalNetwork', 'SiameseNetwork', 'TRAINING_FREE_BASELINES',
    'VerificationExperiment', 'auc_by_gap', 'black_out_boxes', 'build_retrieval_network', 'embed_images',
    'evaluate_retrieval', 'identity_cues', 'linkage_attack', 'linkage_hit_rates', 'linkage_queries',
    'nearest_matches', 'normalized', 'pair_gaps', 'pair_scores', 'retrieval_augmentation',
    'retrieval_embeddings', 'run_checkpoint', 'text_box_effect', 'train_retrieval', 'train_verification',
    'verification_experiments', 'verification_loss', 'verification_run', 'verification_runs']
