"""The classical baselines as Keras models, so that one kept instead of the network (``model.
candidates: network_and_classical``) is saved, loaded, exported, served and explained like any
other model: raw pixels in [0, 255] in, a Dense softmax layer out (what temperature scaling and
the saliency maps expect), and the same decisions as scikit-learn's.

- Logistic regression: the pixels scaled to [0, 1] and flattened, then its own weights in the
  softmax layer: the same probabilities as ``predict_proba``.
- RBF SVM: ``exp(-gamma |x - v|^2)`` against every support vector, the one-vs-one decisions as a
  linear layer of the dual coefficients, then scikit-learn's one-vs-rest aggregation
  (``decision_function_shape="ovr"``: votes, ties broken by the summed confidences) whose
  argmax is the predicted class; the softmax layer turns those scores into probabilities
  (the temperature fitted on validation sets how sharp).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from ..quiet_tensorflow import keras


@keras.saving.register_keras_serializable(package="imgcls")
class RBFKernel(keras.layers.Layer):
    """``exp(-gamma * |x - v|^2)`` for every row ``v`` of the (fixed) support vectors."""

    def __init__(self, vectors: int, gamma: float, **kwargs):
        super().__init__(**kwargs)
        self.vectors, self.gamma = vectors, gamma

    def build(self, input_shape):
        self.support = self.add_weight(name="support_vectors", shape=(self.vectors, input_shape[-1]),
                                       initializer="zeros", trainable=False)

    def call(self, inputs):
        ops = keras.ops
        squared = (ops.sum(inputs * inputs, axis=-1, keepdims=True)
                   - 2 * ops.matmul(inputs, ops.transpose(self.support))
                   + ops.sum(self.support * self.support, axis=-1)[None, :])
        return ops.exp(-self.gamma * ops.maximum(squared, 0.0))

    def get_config(self) -> dict:
        return {**super().get_config(), "vectors": self.vectors, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="imgcls")
class OneVsRestScores(keras.layers.Layer):
    """scikit-learn's ``_ovr_decision_function``: from the one-vs-one decisions of every pair
    (i, j), i < j, in scikit-learn's order (positive: i wins), each class's votes plus its summed
    confidence squashed into (-1/3, 1/3), which only breaks ties between equal votes."""

    def __init__(self, classes: int, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        pairs = [(i, j) for i in range(classes) for j in range(i + 1, classes)]
        self.first = np.eye(classes, dtype="float32")[[i for i, _ in pairs]]
        self.second = np.eye(classes, dtype="float32")[[j for _, j in pairs]]

    def call(self, decisions):
        ops = keras.ops
        wins = ops.cast(decisions >= 0, decisions.dtype)
        votes = ops.matmul(wins, self.first) + ops.matmul(1 - wins, self.second)
        confidence = ops.matmul(decisions, self.first - self.second)
        return votes + confidence / (3 * (ops.abs(confidence) + 1))

    def get_config(self) -> dict:
        return {**super().get_config(), "classes": self.classes}


def classical_keras_model(fitted, input_shape: tuple[int, int, int], classes: int) -> keras.Model:
    """A fitted ``LogisticRegression`` or ``SVC`` (trained on pixels / 255, flattened, labels
    ``0..classes-1`` all present) as a Keras model of raw pixels."""
    inputs = keras.Input(shape=input_shape, name="image")
    # float32 throughout, whatever the mixed-precision policy: squared distances in bfloat16
    # would lose the kernel's small differences.
    rescaled = keras.layers.Rescaling(1.0 / 255, name="rescale", dtype="float32")(inputs)
    x = keras.layers.Flatten(name="flatten", dtype="float32")(rescaled)
    if isinstance(fitted, SVC):
        x, kernel = _svm_scores(fitted, x, classes)
        bias = np.zeros(classes)
    elif isinstance(fitted, LogisticRegression):
        kernel, bias = _logistic_weights(fitted)
    else:
        raise TypeError(f"no Keras form for {type(fitted).__name__}")
    output = keras.layers.Dense(classes, activation="softmax", dtype="float32",
                                name="probabilities")
    model = keras.Model(inputs, output(x), name=type(fitted).__name__.lower())
    output.set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model


def _logistic_weights(fitted: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """Softmax weights: multinomial ones as they are; a binary model's single logit z for class 1
    as the logits (0, z), whose softmax is (1 - sigmoid(z), sigmoid(z))."""
    kernel, bias = fitted.coef_.T, fitted.intercept_
    if kernel.shape[1] == 1:
        kernel, bias = np.hstack([np.zeros_like(kernel), kernel]), np.array([0.0, bias[0]])
    return kernel, bias


def _svm_scores(fitted: SVC, x, classes: int):
    """The RBF kernel against the support vectors, the one-vs-one decisions, their aggregation;
    and the softmax kernel that turns them into one logit per class (a binary model's one
    decision d into (-d, d))."""
    vectors = fitted.support_vectors_
    kernel = RBFKernel(len(vectors), float(fitted._gamma), name="rbf_kernel", dtype="float32")
    weights, bias = _pair_weights(fitted, classes)
    pairs = keras.layers.Dense(len(bias), name="pair_decisions", dtype="float32")
    x = pairs(kernel(x))
    kernel.set_weights([vectors.astype("float32")])
    pairs.set_weights([weights.astype("float32"), bias.astype("float32")])
    if classes == 2:
        return x, np.array([[-1.0, 1.0]])
    return OneVsRestScores(classes, name="one_vs_rest", dtype="float32")(x), np.eye(classes)


def _pair_weights(fitted: SVC, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """libsvm's one-vs-one decision of pair (i, j) is the sum over class i's support vectors of
    ``dual_coef_[j - 1]`` times their kernel values, plus over class j's of ``dual_coef_[i]``,
    plus the pair's intercept: as a matrix of (support vectors x pairs). A binary model's one
    decision is positive for class 1, as scikit-learn reports it."""
    starts = np.concatenate([[0], np.cumsum(fitted.n_support_)])
    pairs = [(i, j) for i in range(classes) for j in range(i + 1, classes)]
    weights = np.zeros((len(fitted.support_vectors_), len(pairs)))
    for column, (i, j) in enumerate(pairs):
        weights[starts[i]:starts[i + 1], column] = fitted.dual_coef_[j - 1, starts[i]:starts[i + 1]]
        weights[starts[j]:starts[j + 1], column] = fitted.dual_coef_[i, starts[j]:starts[j + 1]]
    return weights, np.asarray(fitted.intercept_, dtype=float)
