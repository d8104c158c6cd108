"""Stage 4, serving: a model folder becomes an export, predictions, and a server.

``graph`` is the exported graph (image bytes in, probabilities out) and its one loader;
``export`` writes ``exports/<name>/<version>/`` for TensorFlow Serving, with ``tflite``'s
TensorFlow Lite variants; ``graph_inputs`` says which images the graph decodes and finds the
one a batch was refused for; ``prediction`` gives top-k labels for files with a model folder, an
export or a ``.tflite`` file. ``imgcls serve`` is ``settings`` -> ``versions`` (loading, warm-up,
hot swap) -> ``coalescing`` (decoding) and ``batching`` -> ``app`` (one router per API:
``rest_api`` speaks TensorFlow Serving's JSON) behind ``middleware`` and ``monitoring``, and
``grpc_api`` (TensorFlow Serving's gRPC API in the same event loop), run by ``run``;
``deployment`` renders replicas behind nginx. Only this subpackage needs the ``serving``
extras (FastAPI, uvicorn, Prometheus, TensorFlow Serving's protos, LiteRT), and only the
server's modules import FastAPI.
"""
