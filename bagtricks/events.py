"""TensorBoard event files written through ``bagtricks.paths`` (local or ``gs://``).

A run's scalars and hyperparameters go to TensorBoard as TFRecord files of ``Event`` protos
(the format TensorBoard reads: per record a little-endian uint64 length, its masked CRC-32C,
the bytes, their masked CRC-32C). This writer builds the protos with TensorBoard's own
Python package and writes the records with ``bagtricks.paths``, so a workdir in a Cloud
Storage bucket needs no TensorFlow filesystem, and ``keep_steps_up_to`` can drop the records
of the steps a resumed run logs again (each step then appears once, as in ``metrics.jsonl``).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any, Iterator, List, Mapping

from clu import metric_writers
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from bagtricks import paths

_MARKER = "tfevents"


def encode_record(data: bytes) -> bytes:
  """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data
          + struct.pack("<I", masked_crc32c(data)))


def decode_records(blob: bytes) -> Iterator[bytes]:
  """The records of a TFRecord file's bytes; stops at a truncated tail (a run killed mid-write).

  Raises:
    ValueError: a record's checksum does not match (a damaged file).
  """
  offset = 0
  while offset + 12 <= len(blob):
    header = blob[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", blob[offset + 8:offset + 12])
    end = offset + 12 + length + 4
    if header_crc != masked_crc32c(header):
      raise ValueError(f"event record at byte {offset} has a damaged length")
    if end > len(blob):
      return
    data = blob[offset + 12:offset + 12 + length]
    if struct.unpack("<I", blob[end - 4:end])[0] != masked_crc32c(data):
      raise ValueError(f"event record at byte {offset} is damaged")
    yield data
    offset = end


def event_files(logdir: str) -> List[str]:
  """The TensorBoard event files directly in ``logdir``, sorted by name."""
  if not paths.isdir(logdir):
    return []
  return [paths.join(logdir, name) for name in paths.listdir(logdir) if _MARKER in name]


def read_events(path: str) -> List[event_pb2.Event]:
  """The ``Event`` protos of one event file, in order."""
  with paths.open_file(path, "rb") as f:
    return [event_pb2.Event.FromString(r) for r in decode_records(f.read())]


def keep_steps_up_to(logdir: str, last_step: int) -> None:
  """Drops the events after ``last_step`` from every event file in ``logdir``.

  A resumed run logs the steps after its checkpoint again; without this TensorBoard would
  draw them twice. Files whose events all stay are left untouched.
  """
  for path in event_files(logdir):
    with paths.open_file(path, "rb") as f:
      records = list(decode_records(f.read()))
    kept = [r for r in records if event_pb2.Event.FromString(r).step <= last_step]
    if len(kept) != len(records):
      paths.write_bytes(path, b"".join(encode_record(r) for r in kept))


class EventFileWriter(metric_writers.MetricWriter):
  """Scalars and hyperparameters as a TensorBoard event file in ``logdir``.

  One file per writer (``events.out.tfevents.<time>.<host>.<pid>``, as TensorFlow names
  them), written through ``paths.AppendOnlyFile``: locally at every write, so a killed run
  keeps its events; to a bucket, uploaded whole every minute and at ``flush``.
  """

  def __init__(self, logdir: str):
    self._file = paths.AppendOnlyFile(paths.join(
        logdir, f"events.out.{_MARKER}.{int(time.time())}.{socket.gethostname()}."
        f"{os.getpid()}"))
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _add(self, event: event_pb2.Event) -> None:
    self._file.append(encode_record(event.SerializeToString()))

  def _summary(self, step: int, summary: summary_pb2.Summary) -> None:
    self._add(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._summary(step, summary_pb2.Summary(value=values))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # TensorBoard's HParams plugin format, built without TensorFlow.
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=import-outside-toplevel
    self._summary(0, summary_v2.hparams_pb(dict(hparams)))

  def write_summaries(self, step, values, metadata=None):
    raise NotImplementedError("EventFileWriter records scalars and hparams only.")

  def write_images(self, step, images):
    raise NotImplementedError("EventFileWriter records scalars and hparams only.")

  def write_videos(self, step, videos):
    raise NotImplementedError("EventFileWriter records scalars and hparams only.")

  def write_audios(self, step, audios, *, sample_rate):
    raise NotImplementedError("EventFileWriter records scalars and hparams only.")

  def write_texts(self, step, texts):
    raise NotImplementedError("EventFileWriter records scalars and hparams only.")

  def write_histograms(self, step, arrays, num_buckets=None):
    raise NotImplementedError("EventFileWriter records scalars and hparams only.")

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.flush()
