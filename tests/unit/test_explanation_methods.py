"""The attribution methods' math on small models built here: numpy functions, an ONNX graph run by
onnxruntime, and (with torch and Captum installed) a small convolutional network."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from medserve.explanations import checks
from medserve.explanations.integrated_gradients import path_alphas, path_integrated_gradients
from medserve.explanations.methods import plan_method, run_perturbation
from medserve.explanations.occlusion import occlusion
from medserve.explanations.perturbation import Evaluate, normalise_window, tiles
from medserve.explanations.target import Target, parse_target
from medserve.values.errors import InvalidInput


def numpy_model(fn: Any) -> Evaluate:
    """An evaluator over a numpy function of a batch, counting the rows it saw."""

    async def evaluate(batch: np.ndarray) -> np.ndarray:
        evaluate.rows += len(batch)  # type: ignore[attr-defined]
        return np.asarray(fn(batch), dtype=np.float64)

    evaluate.rows = 0  # type: ignore[attr-defined]
    return evaluate


RNG = np.random.default_rng(7)
W = RNG.normal(size=12)


def smooth(batch: np.ndarray) -> np.ndarray:
    """A smooth non-linear scalar model of 12 features."""
    z = batch @ W
    return 1.0 / (1.0 + np.exp(-z)) + 0.1 * np.sin(batch[:, 0] * batch[:, 1])


# -- Integrated Gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["riemann_trapezoid", "riemann_middle"])
async def test_finite_difference_ig_is_complete_within_one_percent(rule: str) -> None:
    x = RNG.normal(size=12).astype(np.float64)
    model = numpy_model(smooth)
    attributions = await path_integrated_gradients(x, model, steps=64, rule=rule, batch_size=100)
    f_x, f_0 = smooth(x[None])[0], smooth(np.zeros((1, 12)))[0]
    assert attributions.shape == x.shape
    assert checks.completeness_error(attributions, f_x, f_0) < 0.01
    assert model.rows == 2 * 64 * 12  # type: ignore[attr-defined]


async def test_finite_difference_ig_with_few_steps_is_less_complete_than_with_many() -> None:
    x = np.linspace(-2.0, 2.0, 12)
    f_x, f_0 = smooth(x[None])[0], smooth(np.zeros((1, 12)))[0]
    few = await path_integrated_gradients(x, numpy_model(smooth), steps=2, rule="riemann_left")
    many = await path_integrated_gradients(x, numpy_model(smooth), steps=128)
    assert checks.completeness_error(many, f_x, f_0) < checks.completeness_error(few, f_x, f_0)


async def test_finite_difference_ig_on_a_linear_model_is_weight_times_input() -> None:
    w = np.arange(1.0, 7.0).reshape(2, 3)
    x = np.full((2, 3), 2.0)

    def linear(batch: np.ndarray) -> np.ndarray:
        return (batch * w).reshape(len(batch), -1).sum(axis=1)

    attributions = await path_integrated_gradients(x, numpy_model(linear), baseline=0.5, steps=4)
    np.testing.assert_allclose(attributions, w * (x - 0.5), rtol=1e-6)


async def test_finite_difference_ig_in_windows_stays_complete_on_an_image() -> None:
    image = RNG.uniform(size=(1, 10, 10))
    kernel = RNG.uniform(size=(1, 10, 10))

    def model(batch: np.ndarray) -> np.ndarray:
        return np.tanh((batch * kernel).reshape(len(batch), -1).sum(axis=1) / 20.0)

    attributions = await path_integrated_gradients(image, numpy_model(model), steps=48, window=4)
    f_x, f_0 = model(image[None])[0], model(np.zeros((1, 1, 10, 10)))[0]
    assert checks.completeness_error(attributions, f_x, f_0) < 0.01
    assert len(tiles((1, 10, 10), normalise_window(4, (1, 10, 10)))) == 9  # 4 + 4 + 2 per side


def test_path_rules() -> None:
    alphas, weights = path_alphas(5, "riemann_trapezoid")
    np.testing.assert_allclose(alphas, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(weights, [0.125, 0.25, 0.25, 0.25, 0.125])
    assert path_alphas(4, "riemann_left")[0][0] == 0.0
    assert path_alphas(4, "riemann_right")[0][-1] == 1.0
    with pytest.raises(InvalidInput, match="rule"):
        path_alphas(4, "simpson")
    with pytest.raises(InvalidInput, match="steps"):
        path_alphas(1)


# -- occlusion --------------------------------------------------------------------------------------
def region_onnx_model(shape: tuple[int, int], region: tuple[slice, slice]) -> Any:
    """An ONNX graph (run by onnxruntime) whose output is the mean of the image inside ``region`` only:
    a fixed mask multiplied in, then summed."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    mask = np.zeros((1, 1, *shape), dtype=np.float32)
    mask[(0, 0, *region)] = 1.0 / mask[(0, 0, *region)].size
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["image", "mask"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axes"], ["score"], keepdims=0),
        ],
        "region",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, *shape])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])],
        [
            numpy_helper.from_array(mask, "mask"),
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"image": batch.astype(np.float32)})[0])

    return run


async def test_occlusion_puts_the_attribution_where_the_model_looks() -> None:
    region = (slice(4, 12), slice(20, 28))
    run = region_onnx_model((32, 32), region)
    image = RNG.uniform(0.5, 1.0, size=(1, 32, 32)).astype(np.float32)
    model = numpy_model(run)
    attributions = await occlusion(image, model, window=4, stride=4, batch_size=16)
    mask = np.zeros(image.shape, dtype=bool)
    mask[(0, *region)] = True
    assert checks.mass_inside(attributions, mask) > 0.999
    assert attributions[mask].min() > 0  # hiding what it looks at lowers the output
    assert model.rows == 64 + 1  # type: ignore[attr-defined]


async def test_feature_ablation_finds_the_one_feature_a_tabular_model_reads() -> None:
    x = RNG.uniform(1.0, 2.0, size=8)

    def reads_feature_5(batch: np.ndarray) -> np.ndarray:
        return 3.0 * batch[:, 5] ** 2

    attributions = await occlusion(x, numpy_model(reads_feature_5), baseline=0.0)
    assert np.argmax(np.abs(attributions)) == 5
    np.testing.assert_allclose(np.delete(attributions, 5), 0.0)
    assert attributions[5] == pytest.approx(3.0 * x[5] ** 2)


async def test_occlusion_with_overlapping_windows_averages_over_the_windows() -> None:
    x = np.ones(6)

    def total(batch: np.ndarray) -> np.ndarray:
        return batch.sum(axis=1)

    attributions = await occlusion(x, numpy_model(total), window=2, stride=1)
    np.testing.assert_allclose(attributions, 2.0)  # each window's drop is 2, every element is in one


# -- names, parameters and the cap ------------------------------------------------------------------
def test_targets() -> None:
    outputs = [("probabilities", [14]), ("forecast", [2, 7, 3])]
    assert parse_target(3, outputs) == Target("probabilities", 3)
    assert parse_target({"output": "forecast", "index": [1, 0, 2]}, outputs) == Target("forecast", 23)
    assert parse_target("forecast:5", outputs) == Target("forecast", 5)
    for bad, words in [
        (14, "out of range"),
        ({"output": "logits", "index": 0}, "outputs are"),
        ("x", "integer class index"),
        (True, "integer class index"),
        ({"output": "forecast", "index": [2, 0, 0]}, "does not fit"),
        (None, "required"),
        ({"index": 0, "colour": 1}, "unknown keys"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            parse_target(bad, outputs)
    np.testing.assert_array_equal(Target("p", 1).pick(np.array([[0.0, 2.0], [3.0, 4.0]])), [2.0, 4.0])


def test_plans_check_parameters_and_the_cap() -> None:
    image = (1, 224, 224)
    occ = plan_method("occlusion", {}, image, gradients=False, max_evaluations=10_000)
    assert occ.parameters["window"] == [1, 16, 16] and occ.evaluations == 14 * 14 + 1
    ig = plan_method("integrated_gradients", {"steps": 8}, (25,), gradients=False, max_evaluations=10_000)
    assert ig.implementation == "finite_differences" and ig.evaluations == 2 * 8 * 25
    captum = plan_method("integrated_gradients", {}, image, gradients=True, max_evaluations=10_000)
    assert captum.implementation == "captum" and captum.parameters["steps"] == 32
    for method, parameters, shape, gradients, words in [
        ("lime", {}, (25,), False, "must be one of"),
        ("occlusion", {"window": "big"}, image, False, "window"),
        ("occlusion", {"window": [1, 0, 16]}, image, False, "window"),
        ("occlusion", {"window": 1}, image, False, "takes 50177 model evaluations"),
        ("occlusion", {"steps": 3}, image, False, "do not apply"),
        ("integrated_gradients", {"steps": 1}, (25,), False, "steps"),
        ("integrated_gradients", {"steps": 2.5}, (25,), False, "steps"),
        ("integrated_gradients", {"rule": "simpson"}, (25,), False, "rule"),
        ("integrated_gradients", {"epsilon": 0.5}, (25,), False, "epsilon"),
        ("integrated_gradients", {"baseline": [0.0] * 3}, (25,), False, None),
        ("integrated_gradients", {"implementation": "captum"}, (25,), False, "torch model"),
        ("grad_cam", {}, image, False, "torch model"),
        ("feature_ablation", {"batch_size": 0}, (25,), False, "batch_size"),
    ]:
        if words is None:  # a baseline of the wrong length is found when it is used
            plan = plan_method(method, parameters, shape, gradients=gradients, max_evaluations=10_000)
            with pytest.raises(InvalidInput, match="baseline"):
                import asyncio

                asyncio.run(run_perturbation(plan, np.zeros(shape), numpy_model(lambda b: b.sum(axis=1))))
            continue
        with pytest.raises(InvalidInput, match=words):
            plan_method(method, parameters, shape, gradients=gradients, max_evaluations=10_000)


# -- checks -----------------------------------------------------------------------------------------
def test_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    a = RNG.integers(0, 5, size=200).astype(float)
    b = a + RNG.normal(size=200)
    assert checks.spearman(a, b) == pytest.approx(float(stats.spearmanr(a, b)[0]), abs=1e-12)
    assert checks.spearman(np.ones(5), np.arange(5.0)) == 0.0


def test_an_explain_request_carries_one_non_empty_sample() -> None:
    from medserve.explanations.service import _sample
    from medserve.values.types import InferenceRequest, Tensor

    def request(shape: tuple[int, ...], name: str = "x") -> InferenceRequest:
        return InferenceRequest("m", inputs=[Tensor(name, "FP32", shape, np.zeros(shape, np.float32))])

    x, _ = _sample(request((1, 4)), ["x"], batched=True)
    assert x.shape == (4,)
    for shape, name, inputs, words in [
        ((1, 0), "x", ["x"], "no elements"),
        ((2, 4), "x", ["x"], "one sample"),
        ((1, 4), "y", ["x"], "one input 'x'"),
        ((1, 4), "x", ["x", "z"], "one input"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            _sample(request(shape, name), inputs, batched=True)
