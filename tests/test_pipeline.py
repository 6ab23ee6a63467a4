"""The Grain pipeline: exact resume from the iterator state, per-process slices, eval padding,
the in-memory cache, and resize='shorter_side' at training and evaluation (read off images
whose pixels encode their coordinates)."""

import numpy as np
import pytest

from conftest import tiny_config
from deep_image.data import pipeline, sources, transforms


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


def test_the_data_order_is_the_seeds():
    """config.seed draws the shuffle: one seed always gives one order, another seed another
    order of the same examples (a study's replicates differ in their data order too)."""
    src = IndexSource(24)

    def epoch(seed):
        config = tiny_config(seed=seed, data__augment=dict(crop=False, flip=False), batch_size=4)
        it = iter(pipeline.train_dataset(src, config))
        return [i for _ in range(6) for i in _ids(next(it))]
    first, again, other = epoch(0), epoch(0), epoch(1)
    assert sorted(first) == sorted(other) == list(range(24))
    assert first == again
    assert first != other, "seeds 0 and 1 drew one data order"


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


# ----------------------------------------------------------------------------- shorter side

class RampSource:
    """Images whose pixels say where they are: red = 2 x column, green = 2 x row (so under any
    linear or area resize a pixel's value still gives its place); landscape 60x90 at even
    indices, portrait 90x60 at odd ones."""

    class_names = ["landscape", "portrait"]

    def __len__(self):
        return 8

    def __getitem__(self, i):
        h, w = (60, 90) if i % 2 == 0 else (90, 60)
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([2 * xx, 2 * yy, np.full_like(xx, 100)], -1).astype(np.uint8)
        return {"image": image, "label": i % 2}


def _geometry(crop):
    """(source pixels per crop pixel along x, along y, top-left offset x, y in the resized
    image), read from a RampSource crop. At shorter side 40, 60 -> 40: 1.5 source pixels per
    output pixel and resized pixel j shows source column 1.5 j + 0.25, red 3 j + 0.5."""
    crop = crop.astype(np.float64)
    ax, bx = np.polyfit(np.arange(crop.shape[1]), crop[:, :, 0].mean(0), 1)
    ay, by = np.polyfit(np.arange(crop.shape[0]), crop[:, :, 1].mean(1), 1)
    return ax / 2, ay / 2, (bx - 0.5) / 3, (by - 0.5) / 3


def test_shorter_side_resize_keeps_the_aspect_ratio():
    # by hand: shorter side -> 40, the other side x the same factor, rounded
    for (h, w), (out_h, out_w) in [((60, 90), (40, 60)), ((90, 60), (60, 40)),
                                   ((45, 45), (40, 40)), ((30, 100), (40, 133)),
                                   ((41, 60), (40, 59)), ((40, 70), (40, 70))]:
        image = np.zeros((h, w, 3), np.uint8)
        assert transforms.resize(image, 40, "shorter_side").shape == (out_h, out_w, 3), (h, w)
        assert transforms.resize(image, 40, "square").shape == (40, 40, 3)
    # the content scaled alike on both axes: a ramp of slope 2 becomes one of slope 3
    resized = transforms.resize(RampSource()[0]["image"], 40, "shorter_side")
    ax, ay, x0, y0 = _geometry(resized[4:-4, 4:-4])
    assert (ax, ay) == pytest.approx((1.5, 1.5), abs=0.02) and (x0, y0) == pytest.approx(
        (4, 4), abs=0.1)


def test_shorter_side_at_training_crops_from_the_whole_resized_image():
    """config.data.resize='shorter_side' (imported weights' default): each training crop is 32
    pixels of the 40x60 (or 60x40) resized image, unstretched, at any of its 8 x 28 (or
    28 x 8) offsets, where a square resize would squash x by 90/40 and allow 8 x 8."""
    config = tiny_config(data__resize="shorter_side", data__scale=40, data__crop=32,
                         data__cache=False, data__augment=dict(crop=True, flip=False),
                         batch_size=4)
    it = iter(pipeline.train_dataset(RampSource(), config))
    offsets = {0: set(), 1: set()}
    for _ in range(16):
        batch = next(it)
        for image, label in zip(batch["image"], batch["label"], strict=True):
            assert image.shape == (32, 32, 3)
            ax, ay, x0, y0 = _geometry(image)
            assert (ax, ay) == pytest.approx((1.5, 1.5), abs=0.02), (label, ax, ay)
            assert abs(x0 - round(x0)) < 0.1 and abs(y0 - round(y0)) < 0.1, (x0, y0)
            offsets[int(label)].add((round(x0), round(y0)))
    for label, (wide, high) in ((0, (28, 8)), (1, (8, 28))):
        xs, ys = [x for x, _ in offsets[label]], [y for _, y in offsets[label]]
        assert min(xs) >= 0 and max(xs) < wide and min(ys) >= 0 and max(ys) < high, label
        # the longer side's freedom is used: offsets beyond what the shorter side allows
        assert max(xs if label == 0 else ys) >= 8, (label, offsets[label])


def test_shorter_side_at_evaluation_takes_the_centre_crop():
    config = tiny_config(data__resize="shorter_side", data__scale=40, data__crop=32,
                         eval_batch_size=4)
    seen = 0
    for batch in pipeline.EvalData(RampSource(), config, cache=False):
        for image, label, keep in zip(batch["image"], batch["label"], batch["mask"],
                                      strict=True):
            if not keep:
                continue
            seen += 1
            ax, ay, x0, y0 = _geometry(image)
            # by hand: 40x60 -> offsets ((40 - 32) // 2, (60 - 32) // 2) = (4, 14)
            expected = (14, 4) if label == 0 else (4, 14)
            assert (ax, ay, x0, y0) == pytest.approx((1.5, 1.5, *expected), abs=0.1), label
    assert seen == 8


class OpenCVThreadsSource(IndexSource):
    """Each example's label is the number of threads OpenCV would use where it is read."""

    class_names = [str(i) for i in range(64)]

    def __getitem__(self, i):
        import cv2
        return {**super().__getitem__(i), "label": cv2.getNumThreads()}


@pytest.mark.parametrize("workers", [0, 1])
def test_opencv_runs_single_threaded_where_the_pipeline_reads(workers):
    """The pipeline's threads and workers are its parallelism: an OpenCV pool as large as the
    machine in each of them would oversubscribe the host."""
    import cv2
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        config = tiny_config(data__workers=workers, data__augment=dict(crop=False, flip=False),
                             batch_size=4)
        it = iter(pipeline.train_dataset(OpenCVThreadsSource(24), config))
        assert [next(it)["label"].tolist() for _ in range(3)] == [[1] * 4] * 3
        it.close()
    finally:
        cv2.setNumThreads(before)


def test_host_parallelism_follows_the_cpus_this_process_may_use(monkeypatch):
    import ml_collections
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert pipeline.usable_cpus() == 16
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "12")
    assert pipeline.usable_cpus() == 12
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "32")        # the affinity mask is the bound
    assert pipeline.usable_cpus() == 16

    def data(workers=-1, threads=-1, cache=False):
        return ml_collections.ConfigDict({"workers": workers, "threads": threads,
                                          "cache": cache})
    # a GPU task with 12 CPUs: 11 workers (one CPU for the training process), 2 threads each
    assert pipeline.host_parallelism(data(), "gpu", cpus=12) == (11, 2)
    # the step on the CPUs: they are the step's; decode in the process, a thread per CPU
    assert pipeline.host_parallelism(data(), "cpu", cpus=12) == (0, 12)
    # a host cache lives in one process: its threads share it
    assert pipeline.host_parallelism(data(cache=True), "gpu", cpus=12) == (0, 12)
    assert pipeline.host_parallelism(data(), "gpu", cpus=2) == (0, 2)
    # the config's own numbers win
    assert pipeline.host_parallelism(data(3, 5), "gpu", cpus=12) == (3, 5)
    assert pipeline.host_parallelism(data(0, -1), "gpu", cpus=12) == (0, 12)
    assert pipeline.host_parallelism(data(4, -1), "cpu", cpus=12) == (4, 2)


def test_batches_prefetched_on_the_devices_resume_where_the_loop_took_them():
    """With batches put on the devices ahead of the step, the saved position is that of the
    last batch taken, not of the last one read: a resume continues with the next batch of the
    plain stream."""
    import time

    import jax
    config = tiny_config(data__augment=dict(crop=False, flip=False), batch_size=4)
    src = IndexSource(40)
    plain = iter(pipeline.train_dataset(src, config))
    want = [_ids(next(plain)) for _ in range(8)]

    def put(batch):
        return {k: jax.device_put(v) for k, v in batch.items()}

    it = iter(pipeline.on_devices(pipeline.train_dataset(src, config), put, 2))
    taken = [next(it) for _ in range(5)]
    assert all(isinstance(b["image"], jax.Array) for b in taken)
    time.sleep(0.5)                      # the prefetch thread reads ahead meanwhile
    state = it.get_state()
    resumed = iter(pipeline.on_devices(pipeline.train_dataset(src, config), put, 2))
    resumed.set_state(state)
    got = [_ids(jax.device_get(b)) for b in taken] + [_ids(jax.device_get(next(resumed)))
                                                      for _ in range(3)]
    assert got == want
    it.close()
    resumed.close()
