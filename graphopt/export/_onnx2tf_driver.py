"""Runs onnx2tf inside its isolated tool environment. Executed as a script by that
environment's python (graphopt.export.litert), never imported by graphopt.

    python _onnx2tf_driver.py JOB.json

JOB.json: {"onnx": path, "out": folder, "int8": bool, "pseudo": [op types],
           "calib": {input name: [npy path (TF layout), ...]}}
The working directory holds the calibration sample onnx2tf would otherwise download.
"""

import json
import os
import sys


def main() -> int:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import onnx2tf

    kwargs = {}
    if job.get("int8"):
        cind = []
        for name, path in job["calib"].items():
            data = np.load(path)
            zeros = np.zeros((1,) + data.shape[1:], np.float32)
            cind.append([name, path, zeros, np.ones_like(zeros)])
        kwargs.update(output_integer_quantized_tflite=True, quant_type="per-channel",
                      custom_input_op_name_np_data_path=cind)
    if job.get("pseudo"):
        kwargs["replace_to_pseudo_operators"] = job["pseudo"]
    onnx2tf.convert(input_onnx_file_path=job["onnx"], output_folder_path=job["out"], non_verbose=True, **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
