"""The Grain pipeline: exact resume from the iterator state, per-process slices, eval padding,
and the in-memory cache."""

import numpy as np
import pytest

from conftest import tiny_config
from deep_image.data import pipeline, sources


class IndexSource:
    """Image pixels encode the index, so batches reveal which examples they hold."""

    class_names = ["even", "odd"]

    def __init__(self, n, size=40):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = np.zeros((self.size, self.size, 3), np.uint8)
        image[..., 0], image[..., 1] = i % 256, i // 256
        return {"image": image, "label": i % 2}


def _ids(batch):
    img = batch["image"].astype(np.int64)
    return (img[:, 0, 0, 0] + 256 * img[:, 0, 0, 1]).tolist()


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_from_iterator_state_gives_the_same_batches(workers):
    config = tiny_config(data__workers=workers, data__augment=dict(
        crop=True, flip=True, rotation=True, lens_distortion=True, color_cast=True,
        vignetting=True))
    source = sources.get_source(config.data, "train")
    it = iter(pipeline.train_dataset(source, config))
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(pipeline.train_dataset(source, config))
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(3)]):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_a_stream_started_at_a_step_continues_on_another_process_count():
    # what a resume on another number of processes does: the same global batches from there
    config = tiny_config(data__augment=dict(crop=False, flip=False), batch_size=4)
    src = IndexSource(24)
    one = iter(pipeline.train_dataset(src, config))
    after = [_ids(next(one)) for _ in range(10)][7:]
    halves = [iter(pipeline.train_dataset(src, config, process_index=p, process_count=2,
                                          start_step=7)) for p in range(2)]
    assert [_ids(next(halves[0])) + _ids(next(halves[1])) for _ in range(3)] == after


def test_each_process_reads_its_own_slice_of_every_epoch():
    config = tiny_config(data__augment=dict(crop=False, flip=False), batch_size=4)
    src = IndexSource(24)
    seen = []
    for p in range(2):
        it = iter(pipeline.train_dataset(src, config, process_index=p, process_count=2))
        # global batch 4 = 2 per process; 6 batches = this process's half of the epoch
        seen.append([i for _ in range(6) for i in _ids(next(it))])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(24))
    # the next epoch is shuffled differently
    it = iter(pipeline.train_dataset(src, config))
    epochs = [[i for _ in range(6) for i in _ids(next(it))] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(24)) and epochs[0] != epochs[1]


def test_eval_counts_every_example_once_across_processes():
    config = tiny_config(eval_batch_size=6)
    src = IndexSource(10)
    got, batches = [], []
    for p in range(3):
        data = pipeline.EvalData(src, config, process_index=p, process_count=3)
        bs = list(data)
        batches.append(len(bs))
        for b in bs:
            got += [i for i, m in zip(_ids(b), b["mask"]) if m]
    assert len(set(batches)) == 1                 # same number of batches on every process
    assert sorted(got) == list(range(10))


def test_cache_serves_the_same_images():
    plain = tiny_config()
    cached = tiny_config(data__cache=True)
    source = sources.get_source(plain.data, "train")
    a = iter(pipeline.train_dataset(source, plain))
    b = iter(pipeline.train_dataset(source, cached))
    for _ in range(3):
        np.testing.assert_array_equal(next(a)["image"], next(b)["image"])
