import os

from imgcls_utils.quiet_tensorflow import _stderr_filtered


def test_known_startup_notices_are_dropped_and_real_errors_kept(capfd):
    with _stderr_filtered():
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1.0 1 something.cc:1] real failure: disk full\n")
    err = capfd.readouterr().err
    assert "real failure: disk full" in err and "oneDNN" not in err


def test_tensorflow_info_logs_are_off_by_default_unless_the_user_chose():
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] in {"0", "1", "2", "3"}
