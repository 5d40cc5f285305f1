"""bAbI-style reasoning as graphs, generated from a seed (GGNN, Li et al. 2016, section 5.1).

The GGNN paper turns each bAbI story into a graph: entities are nodes, each fact
``A relation B`` an edge of the relation's type from A to B, and the question marks its
entities in the node annotations. We generate the stories' graphs directly (no text):

* task 4, two-argument relations: three places, two facts ``A <dir> of B`` sharing one place,
  and a question ``what is <dir> of B?`` (answer A) or ``what is A <dir> of?`` (answer B).
  The question's direction and form are annotations of the asked node (the paper trained one
  network per question type instead).
* task 15, basic deduction: four kinds each afraid of one kind (``mice are afraid of
  wolves``), four individuals each of a kind; ``what is <individual> afraid of?`` answers the
  kind (two hops: is-a, then afraid-of).
* task 16, basic induction: five individuals of four kinds, each kind one colour, every
  individual's colour stated except the asked one's, who shares a kind with a stated one;
  the answer is the colour node (three hops).
* task 18, size reasoning: five objects in a random order of size, the facts the chain
  ``X is bigger than Y`` of neighbours in that order (``Y fits inside X`` is the same edge);
  ``is A bigger than B?`` answers yes or no (a class per graph), up to four hops.
* task 19, path finding: five rooms on a grid, four facts ``X is <dir> of Y``; ``how do you
  go from A to B?`` answers the two directions of the two-step path (one of 16 classes; the
  paper's GGS-NN emits them as a sequence).

Node features are the annotations (which node the question names, and for task 4 the
question's direction and form); node identities are not features, so the network must
reason over the edges. Tasks 4, 15 and 16 are node selection (``answer``), tasks 18 and 19
classes per graph (``label``).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import DataError, with_dataset_defaults
from bagtricks.data.graphs import pad_graphs

DIRECTIONS = ("north", "east", "south", "west")
_STEP = {0: (0, 1), 1: (1, 0), 2: (0, -1), 3: (-1, 0)}  # The direction's move on a grid.


def _graph(num_nodes: int, num_types: int, edges, annotations: np.ndarray):
  adjacency = np.zeros((num_types, num_nodes, num_nodes), np.float32)
  for source, edge_type, target in edges:
    adjacency[edge_type, source, target] = 1.0
  return {"nodes": annotations.astype(np.float32), "adjacency": adjacency}


def _marks(num_nodes: int, width: int, marked: Dict[int, int]) -> np.ndarray:
  """Annotations ``[num_nodes, width]`` with a 1 at ``(node, dimension)`` per entry."""
  annotations = np.zeros((num_nodes, width), np.float32)
  for node, dim in marked.items():
    annotations[node, dim] = 1.0
  return annotations


def two_argument_relations(rng) -> Tuple[dict, int]:
  """Task 4: returns (graph, answer node)."""
  a, b, c = 0, 1, 2  # A <d1> of B, C <d2> of B, d1 ≠ d2; nodes in random order below.
  d1, d2 = rng.choice(4, 2, replace=False)
  order = rng.permutation(3)
  edges = [(order[a], d1, order[b]), (order[c], d2, order[b])]
  fact, form = int(rng.integers(2)), int(rng.integers(2))
  source, direction, target = edges[fact]
  asked, answer = (target, source) if form == 0 else (source, target)
  annotations = np.zeros((3, 7), np.float32)
  annotations[asked, [0, 1 + direction, 5 + form]] = 1.0
  return _graph(3, 4, edges, annotations), int(answer)


def basic_deduction(rng) -> Tuple[dict, int]:
  """Task 15: kinds are nodes 0–3, individuals 4–7 (then shuffled)."""
  afraid = (np.arange(4) + rng.integers(1, 4, 4)) % 4  # No kind is afraid of itself.
  kind_of = rng.integers(0, 4, 4)
  order = rng.permutation(8)
  edges = [(order[k], 1, order[afraid[k]]) for k in range(4)]  # afraid-of
  edges += [(order[4 + i], 0, order[kind_of[i]]) for i in range(4)]  # is-a
  asked = int(rng.integers(4))
  annotations = _marks(8, 1, {order[4 + asked]: 0})
  return _graph(8, 2, edges, annotations), int(order[afraid[kind_of[asked]]])


def basic_induction(rng) -> Tuple[dict, int]:
  """Task 16: individuals 0–4, kinds 5–8, colours 9–12 (then shuffled)."""
  colour_of_kind = rng.permutation(4)
  kind_of = rng.integers(0, 4, 5)
  asked = int(rng.integers(5))
  told = int(rng.choice([i for i in range(5) if i != asked]))
  kind_of[told] = kind_of[asked]  # Someone of the asked one's kind has a stated colour.
  order = rng.permutation(13)
  edges = [(order[i], 0, order[5 + kind_of[i]]) for i in range(5)]  # is-a
  edges += [(order[i], 1, order[9 + colour_of_kind[kind_of[i]]])
            for i in range(5) if i != asked]  # has-colour
  annotations = _marks(13, 1, {order[asked]: 0})
  return _graph(13, 2, edges, annotations), int(order[9 + colour_of_kind[kind_of[asked]]])


def size_reasoning(rng) -> Tuple[dict, int]:
  """Task 18: object i is bigger than object i + 1 in a random order; returns (graph,
  1 for yes)."""
  order = rng.permutation(5)  # order[r]: the node of the r-th biggest object.
  edges = [(order[r], 0, order[r + 1]) for r in range(4)]
  first, second = rng.choice(5, 2, replace=False)
  annotations = _marks(5, 2, {order[first]: 0, order[second]: 1})
  return _graph(5, 1, edges, annotations), int(first < second)


def path_finding(rng) -> Tuple[dict, int]:
  """Task 19: five rooms placed by a self-avoiding random walk on a grid; the question asks
  the way between two rooms two steps apart, either way along the walk; returns (graph,
  4 · first + second direction)."""
  cells, moves = [(0, 0)], []
  while len(cells) < 5:
    d = int(rng.integers(4))
    cell = (cells[-1][0] + _STEP[d][0], cells[-1][1] + _STEP[d][1])
    if cell in cells:  # A dead end restarts the walk.
      cells, moves = ([(0, 0)], []) if len(cells) > 1 and _boxed_in(cells) else (cells, moves)
      continue
    cells.append(cell)
    moves.append(d)
  order = rng.permutation(5)
  # "room r + 1 is <d> of room r": an edge of type d from r + 1 to r.
  edges = [(order[r + 1], moves[r], order[r]) for r in range(4)]
  start = int(rng.integers(3))
  first, second = moves[start], moves[start + 1]
  source, target = start, start + 2
  if rng.integers(2):  # The way back: the opposite directions in reverse order.
    first, second = (moves[start + 1] + 2) % 4, (moves[start] + 2) % 4
    source, target = target, source
  annotations = _marks(5, 2, {order[source]: 0, order[target]: 1})
  return _graph(5, 4, edges, annotations), 4 * first + second


def _boxed_in(cells) -> bool:
  """Whether the walk's last cell has no free neighbour."""
  x, y = cells[-1]
  return all((x + dx, y + dy) in cells for dx, dy in _STEP.values())


# task number → (generator, what the answer is, number of classes, nodes).
TASKS: Dict[int, Tuple[Callable, str, int, int]] = {
    4: (two_argument_relations, "answer", 3, 3),
    15: (basic_deduction, "answer", 8, 8),
    16: (basic_induction, "answer", 13, 13),
    18: (size_reasoning, "label", 2, 5),
    19: (path_finding, "label", 16, 5),
}


def babi_examples(task: int, count: int, seed: int) -> Dict[str, np.ndarray]:
  """``count`` examples of ``task`` from ``seed``: the padded graph arrays and the target
  (``answer`` or ``label``)."""
  generate, target, _, num_nodes = TASKS[task]
  rng = np.random.default_rng([task, seed])
  graphs, answers = zip(*(generate(rng) for _ in range(count)))
  arrays = pad_graphs(graphs, num_nodes)
  arrays[target] = np.asarray(answers, np.int32)
  return arrays


class BabiSource(ArraySource):
  """GGNN's bAbI tasks as graphs (``dataset.name = 'babi'``).

  Reads ``dataset.task`` (4, 15, 16, 18 or 19), ``train_examples`` (the paper: 50),
  ``test_examples`` and ``seed``; the train and test examples come from different seeds.
  """

  config_defaults = {"task": 4, "train_examples": 50, "test_examples": 1000, "seed": 0}

  def __init__(self, config):
    config = with_dataset_defaults(config, self.config_defaults)
    d = config.dataset
    if d.task not in TASKS:
      raise DataError(f"config.dataset.task={d.task!r} is not a generated bAbI task; use one "
                      f"of {tuple(TASKS)}.")
    _, target, num_classes, _ = TASKS[d.task]
    splits = {"train": babi_examples(d.task, d.train_examples, 2 * d.seed),
              "test": babi_examples(d.task, d.test_examples, 2 * d.seed + 1)}
    super().__init__(config, splits, input_key="nodes",
                     num_classes=None if target == "answer" else num_classes)


BABI_SOURCES = {"babi": BabiSource}
