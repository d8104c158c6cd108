import numpy as np
import pytest

from imgcls_utils import model_utils
from imgcls_utils.evaluation import metrics
from imgcls_utils.quiet_tensorflow import keras, tf


def test_per_class_report_matches_hand_counts():
    report = model_utils.per_class_report(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]),
                                         ["a", "b", "c"])
    assert report.loc["a", "precision"] == 0.5 and report.loc["a", "recall"] == 0.5
    assert report.loc["b", "precision"] == 2 / 3 and report.loc["b", "recall"] == 1.0
    assert report.loc["c", "f1"] == 0.0 and report["support"].tolist() == [2, 2, 1]


def test_metrics_of_a_model_with_known_answers():
    # A fixed "model" that predicts class = argmax of the first three input values.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Softmax()(inputs * 100.0))
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.eye(3, dtype="float32")[[0, 1, 2, 2]]
    y = np.array([0, 1, 2, 1])
    y_true, probabilities = metrics.labels_and_probabilities(
        model, tf.data.Dataset.from_tensor_slices((x, y)).batch(2))
    np.testing.assert_array_equal(y_true, y)
    scores = metrics.classification_metrics(y_true, probabilities, ["a", "b", "c"])
    assert scores["test_accuracy"] == 0.75 and scores["test_images"] == 4
    assert scores["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert scores["per_class"]["b"]["recall"] == 0.5
    assert scores["test_loss"] == pytest.approx(float(keras.losses.sparse_categorical_crossentropy(
        y, model.predict_on_batch(x)).numpy().mean()), abs=1e-6)


def test_most_confused_lists_off_diagonal_cells_largest_first():
    matrix = [[5, 2, 0], [0, 4, 3], [2, 0, 9]]
    table = model_utils.most_confused(matrix, ["a", "b", "c"], top=2)
    assert table.values.tolist() == [["b", "c", 3], ["a", "b", 2]]
    assert len(model_utils.most_confused(np.eye(3, dtype=int), ["a", "b", "c"])) == 0


def test_top_losses_puts_the_most_confident_mistakes_first():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95]])
    table = model_utils.top_losses(np.array([0, 1, 1, 0]), probabilities,
                                  ["w.png", "x.png", "y.png", "z.png"], ["cat", "dog"], count=2)
    assert table["path"].tolist() == ["z.png", "y.png"]
    assert table[["true", "predicted"]].values.tolist() == [["cat", "dog"], ["dog", "cat"]]
    assert table["loss"].iloc[0] == pytest.approx(-np.log(0.05))


def test_correct_examples_are_the_surest_right_answer_of_each_class_in_class_order():
    probabilities = np.array([[0.02, 0.96, 0.02], [0.6, 0.3, 0.1], [0.9, 0.05, 0.05],
                              [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    examples = model_utils.correct_examples(np.array([1, 0, 0, 2, 1]), probabilities,
                                           ["b0", "a1", "a2", "c3", "b4"], ["a", "b", "c"])
    assert examples["path"].tolist() == ["a2", "b0"]  # c3 was mistaken for b, b4 for c
    assert examples.columns.tolist() == model_utils.top_losses(
        np.array([0]), probabilities[:1], ["x"], ["a", "b", "c"]).columns.tolist()


def test_macro_f1_leaves_out_classes_with_no_test_images_that_nothing_predicts():
    """A tiny class that went to training whole cannot be measured: counting it as an F1 of 0
    lowered the network's macro F1 (and not the baselines') by a tenth per such class of ten."""
    truth, predicted = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])
    probabilities = np.eye(3)[predicted]
    scores = metrics.classification_metrics(truth, probabilities, ["a", "b", "never_tested"])
    assert scores["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert scores["per_class"]["never_tested"]["support"] == 0
    wrongly_predicted = metrics.classification_metrics(truth, np.eye(3)[[0, 0, 1, 2]], ["a", "b", "c"])
    assert wrongly_predicted["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
