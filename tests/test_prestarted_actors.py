"""A sweep that starts its own local Ray may put its trials in the workers Ray prestarted (one per CPU,
started while the driver sets up MLflow): Tune's actor classes go without the runtime_env that keeps
an actor out of them while the sweep is fitted (runner.prestarted_actors)."""

from __future__ import annotations


def test_while_fitted_tunes_trial_actors_go_without_the_runtime_env_that_keeps_them_from_prestarted_workers():
    from ray.tune.execution.class_cache import _ActorClassCache

    from tricksweep.runner import prestarted_actors

    class Trainable:
        pass

    assert _ActorClassCache().get(Trainable)._default_options["runtime_env"]  # Tune's own: PL_DISABLE_FORK
    with prestarted_actors(True):
        assert not _ActorClassCache().get(Trainable)._default_options.get("runtime_env")
    assert _ActorClassCache().get(Trainable)._default_options["runtime_env"]  # restored after the sweep
    with prestarted_actors(False):  # a cluster, or a Ray this process did not start: Tune's as it is
        assert _ActorClassCache().get(Trainable)._default_options["runtime_env"]
