"""An ONNX graph read as a chain of linear layers and activations, or refused naming the node.

Read with the ``onnx`` package alone (no runtime). The graph must be one
input of shape (N, d) -> [Gemm, or MatMul with a constant and an optional Add
of a constant bias] -> [an optional BatchNormalization, folded] -> activation
-> ... -> the last linear layer -> the one output. Nodes are taken in graph
order, weights from initializers and Constant nodes:

- Gemm computes alpha A' B' + beta C, so W = alpha B (transB = 1) or
  alpha B^T (transB = 0), b = beta C; transA = 1 is refused;
- MatMul computes x @ B, so W = B^T;
- Identity, Dropout (inference), and Flatten(axis 1) or Reshape to (N, n) of
  the 2-D chain are no-ops;
- an activation is one node (Relu, LeakyRelu, Tanh, Sigmoid, Gelu) or a group
  of elementwise nodes, such as an exporter's x * Sigmoid(x) for SiLU or its
  erf and tanh forms of GELU, which is recognised by evaluating the group on
  probe values and comparing it with each supported activation.

ONNX stores float attributes as float32: alpha, beta, epsilon are read as the
shortest decimal that rounds to the stored value (LeakyRelu's 0.2, not
0.20000000298).
"""

from __future__ import annotations

import math

import numpy as np

from .netarrays import LayerRead, as_float64, assemble, fold_batchnorm

NOOPS = {"Identity", "Dropout", "Flatten", "Reshape"}
#: Elementwise ops an activation group may use (numpy on probe values, scalar constants only).
ELEMENTWISE = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
    "Sqrt": np.sqrt, "Neg": np.negative, "Exp": np.exp, "Log": np.log, "Reciprocal": np.reciprocal,
    "Tanh": np.tanh, "Erf": np.frompyfunc(math.erf, 1, 1),
    "Sigmoid": lambda z: 1 / (1 + np.exp(-z)), "Relu": lambda z: np.maximum(z, 0),
    "Softplus": lambda z: np.logaddexp(z, 0),
}
#: The activations a group is compared with on the probe values.
CANDIDATES = {
    "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "silu": lambda z: z / (1 + np.exp(-z)),
    "gelu": lambda z: 0.5 * z * (1 + np.array([math.erf(v / math.sqrt(2)) for v in z])),
    "gelu_tanh": lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3))),
}
PROBE = np.concatenate([np.linspace(-8, 8, 1601), [-1e-3, -1e-6, 1e-6, 1e-3]])
READOUT = ("the read-out must be linear: nnsweep measures the last linear layer's outputs (the logits). "
           "Export the model without its final activation (apply softmax or sigmoid outside it)")


def _f32(value: float) -> float:
    """The shortest decimal that rounds to the float32 ``value`` (ONNX stores float attributes as float32)."""
    return float(str(np.float32(value)))


class Graph:
    """The chain being read: constants, aliases of no-op outputs, and where the chain's value is."""

    def __init__(self, model, onnx, numpy_helper, bad):
        self.onnx, self.bad = onnx, bad
        g = model.graph
        self.const = {}
        for t in g.initializer:
            self.const[t.name] = self.tensor(t, numpy_helper)
        inputs = [i for i in g.input if i.name not in self.const]
        if len(inputs) != 1 or len(g.output) != 1:
            raise self.refuse(f"has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}) and "
                              f"{len(g.output)} outputs; an MLP has one input of shape (N, d) and one output")
        typ = inputs[0].type.tensor_type
        dims = typ.shape.dim if typ.HasField("shape") else [None, None]
        if len(dims) != 2:
            raise self.refuse(f"has the input {inputs[0].name} of rank {len(dims)}; an MLP takes a 2-D input of "
                              "shape (N, d) (flatten images into vectors before exporting)")
        self.input, self.output = inputs[0].name, g.output[0].name
        self.d = (dims[1].dim_value or None) if dims[1] is not None else None
        self.alias = {}

    def tensor(self, t, numpy_helper):
        name = self.onnx.TensorProto.DataType.Name(t.data_type).lower()
        name = {"float": "float32", "double": "float64"}.get(name, name)
        if t.data_location == self.onnx.TensorProto.EXTERNAL:
            raise self.refuse(f"keeps the initializer {t.name} in an external data file, which nnsweep does not "
                              "read (it reads one file, whose hash it records); save the model with its weights "
                              "inside the file (onnx.save_model(model, path, save_as_external_data=False))")
        try:
            a = numpy_helper.to_array(t)
        except Exception as e:  # external data, a dtype numpy_helper lacks
            raise self.refuse(f"has the initializer {t.name}, which could not be read ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]}); save the model with its weights inside the "
                              "file") from None
        if name == "bfloat16":
            a = a.astype(np.float32)  # exact
        elif a.dtype.kind not in "fiub":
            raise self.refuse(f"has the initializer {t.name} of dtype {name}, which nnsweep does not read; "
                              "export the model in float32")
        return a, name

    def refuse(self, why: str):
        return self.bad(why, expected=None)

    def value(self, name: str) -> str:
        return self.alias.get(name, name)

    def is_const(self, name: str) -> bool:
        return name in self.const


def _attrs(node, onnx) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _node(node) -> str:
    return f"node {node.name or '(unnamed)'} ({node.op_type})"


def read_onnx(data: bytes, bad):
    """The layers of an ONNX MLP.

    Raises:
        ``bad(why)``: not an ONNX model, or a graph that is not such a chain (naming the node and why).
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise bad("is an ONNX model, which needs the onnx package to read, and it is not installed; install "
                  "it (pip install onnx: it reads the graph, no ONNX runtime is needed)", expected=None) from None
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf DecodeError and friends
        raise bad(f"is not a readable ONNX model ({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                  expected=None) from None
    g = Graph(model, onnx, numpy_helper, bad)
    reader = _Chain(g, onnx, numpy_helper)
    for node in model.graph.node:
        reader.node(node)
    return reader.finish()


class _Chain:
    """Reads nodes one at a time: after a linear layer (and its BatchNorm) comes one activation, then the
    next linear layer."""

    def __init__(self, g: Graph, onnx, numpy_helper):
        self.g, self.onnx, self.np_helper = g, onnx, numpy_helper
        self.cur = g.input          # the tensor that holds the chain's value
        self.layers, self.activations = [], []
        self.group = []             # nodes of the activation after the last layer, not yet closed
        self.group_out = set()      # tensors they compute
        self.width = g.d            # width of the chain's value, where known
        self.state = "input"        # "input" | "linear" (just after a layer: bias, BN may follow) | "act"

    # -- nodes -----------------------------------------------------------------------

    def node(self, node) -> None:
        g = self.g
        ins = [g.value(i) for i in node.input if i]
        if node.op_type == "Constant":
            (value,) = [a for a in node.attribute]
            t = value.t if value.type == self.onnx.AttributeProto.TENSOR else None
            if t is None:
                v = self.onnx.helper.get_attribute_value(value)
                g.const[node.output[0]] = (np.asarray(v, dtype=np.float64), "float32")
            else:
                g.const[node.output[0]] = g.tensor(t, self.np_helper)
            return
        if all(g.is_const(i) for i in ins):
            if node.op_type == "Identity":
                g.const[node.output[0]] = g.const[ins[0]]
                return
            raise g.refuse(f"has the {_node(node)} computing on constants only, which nnsweep does not "
                           "evaluate; export with constant folding (torch.onnx.export's default)")
        computed = [i for i in ins if not g.is_const(i)]
        if node.op_type in NOOPS and self.noop(node, ins):
            return
        if node.op_type in ("Gemm", "MatMul"):
            self.linear(node, ins, computed)
        elif node.op_type == "Add" and self.state == "linear" and len(computed) == 1 and computed[0] == self.cur:
            self.add_bias(node, ins)
        elif node.op_type == "BatchNormalization" and self.state == "linear":
            self.batchnorm(node, ins)
        else:
            self.elementwise(node, ins, computed)

    def noop(self, node, ins) -> bool:
        x = ins[0]
        if x != self.cur and x not in self.group_out:
            return False
        a = _attrs(node, self.onnx)
        if node.op_type == "Flatten" and a.get("axis", 1) != 1:
            return False
        if node.op_type == "Reshape":
            shape = self.g.const.get(ins[1], (None,))[0] if len(ins) > 1 else None
            if shape is None or self.width is None or [int(s) for s in np.ravel(shape)] not in (
                    [-1, self.width], [0, self.width]):
                return False
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            return False
        self.g.alias[node.output[0]] = x
        return True

    def linear(self, node, ins, computed) -> None:
        g = self.g
        if len(computed) != 1 or ins[0] != computed[0]:
            why = ("multiplies two computed tensors (attention or a gated layer), not the chain by a weight"
                   if len(computed) != 1 else "computes W @ x with a constant on the left; nnsweep reads x @ B")
            raise g.refuse(f"has the {_node(node)}, which {why}")
        self.close_group(node)
        if ins[0] != self.cur:
            raise g.refuse(self.branch(node, ins[0]))
        a = _attrs(node, self.onnx)
        if a.get("transA", 0):
            raise g.refuse(f"has the {_node(node)} with transA = 1, which multiplies the transposed batch: not "
                           "a layer of an MLP")
        (B, dtype), name = g.const[ins[1]], ins[1]
        if B.ndim != 2:
            raise g.refuse(f"has the {_node(node)} with the weight {name} of shape {B.shape}; expected a matrix")
        transposed = node.op_type == "MatMul" or not a.get("transB", 0)
        W = as_float64(B, name, g.refuse).T if transposed else as_float64(B, name, g.refuse)
        b, bias = None, None
        label = name
        if node.op_type == "Gemm":
            alpha, beta = _f32(a.get("alpha", 1.0)), _f32(a.get("beta", 1.0))
            if alpha != 1.0:
                W, label = alpha * W, f"{name} (times Gemm alpha {alpha!r})"
            if len(ins) > 2:
                b, bias = beta * self.bias_vector(node, ins[2], W.shape[0]), ins[2]
                if beta != 1.0:
                    bias = f"{ins[2]} (times Gemm beta {beta!r})"
        if self.width is not None and W.shape[1] != self.width:
            raise g.refuse(f"has the {_node(node)} with the weight {name} taking {W.shape[1]} inputs, where "
                           f"the chain has {self.width}; its shapes do not chain")
        self.layers.append([W, b, LayerRead(label, bias, W.shape, None, transposed, dtype)])
        self.cur, self.width, self.state = node.output[0], W.shape[0], "linear"

    def bias_vector(self, node, name: str, n: int) -> np.ndarray:
        g = self.g
        c = as_float64(g.const[name][0], name, g.refuse)
        if c.size == 1:
            return np.full(n, c.ravel()[0])
        if c.shape not in ((n,), (1, n)):
            raise g.refuse(f"has the {_node(node)} adding {name} of shape {c.shape} to a layer of {n} outputs; "
                           f"expected a bias of shape ({n},)")
        return c.reshape(n)

    def add_bias(self, node, ins) -> None:
        name = ins[1] if ins[0] == self.cur else ins[0]
        w, b, read = self.layers[-1]
        c = self.bias_vector(node, name, w.shape[0])
        self.layers[-1][1] = c if b is None else b + c
        bias = name if read.bias is None else f"{read.bias} + {name}"
        self.layers[-1][2] = LayerRead(read.weight, bias, read.shape, read.folded, read.transposed, read.dtype)
        self.cur = node.output[0]

    def batchnorm(self, node, ins) -> None:
        g = self.g
        a = _attrs(node, self.onnx)
        if ins[0] != self.cur or len(ins) != 5 or not all(g.is_const(i) for i in ins[1:]) \
                or a.get("training_mode", 0) or len(node.output) > 1 and any(node.output[1:]):
            raise g.refuse(f"has the {_node(node)} in training mode or with computed statistics; export the "
                           "model in eval mode (model.eval()) so that its BatchNorm uses the running statistics")
        w, b, read = self.layers[-1]
        if read.folded is not None:
            raise g.refuse(f"has the {_node(node)} after another BatchNormalization; nnsweep folds one "
                           "BatchNorm into the linear layer it follows")
        gamma, beta, mean, var = (self.bias_vector(node, i, w.shape[0]) for i in ins[1:])
        eps = _f32(a.get("epsilon", 1e-5))
        w, b = fold_batchnorm(w, b, gamma, beta, mean, var, eps)
        self.layers[-1] = [w, b, LayerRead(read.weight, read.bias, read.shape, f"{node.name} (eps {eps!r})",
                                           read.transposed, read.dtype)]
        self.cur = node.output[0]

    def elementwise(self, node, ins, computed) -> None:
        g = self.g
        inside = {self.cur} | self.group_out
        stray = [i for i in computed if i not in inside]
        if stray:
            raise g.refuse(self.branch(node, stray[0]))
        if node.op_type == "BatchNormalization":
            raise g.refuse(f"has the {_node(node)}, which does not directly follow a linear layer; nnsweep folds "
                           "a BatchNorm only into the linear layer it follows")
        if node.op_type in ("Softmax", "LogSoftmax"):
            raise g.refuse(f"has the {_node(node)}, which is not elementwise; if it is the output, {READOUT}")
        if node.op_type not in ELEMENTWISE and node.op_type not in ("LeakyRelu", "Gelu"):
            raise g.refuse(f"has the {_node(node)}, which is neither a linear layer (Gemm, MatMul + Add), a "
                           "BatchNormalization after one, nor an activation; nnsweep reads MLPs only "
                           f"({_why(node.op_type)})")
        if self.state == "input":
            raise g.refuse(f"has the {_node(node)} before the first linear layer; nnsweep reads a chain that "
                           "starts with a linear layer (apply what comes before it to the inputs)")
        for i in ins:
            if g.is_const(i) and np.size(g.const[i][0]) != 1:
                raise g.refuse(f"has the {_node(node)} with the constant {i} of shape {np.shape(g.const[i][0])} "
                               "(one value per unit), which no supported activation has")
        self.group.append(node)
        self.group_out.update(o for o in node.output if o)
        self.state = "act"

    def branch(self, node, tensor: str) -> str:
        return (f"has the {_node(node)} taking {tensor}, which is not the output of the node before it in the "
                "chain (a residual or skip connection, or a branch); nnsweep reads chains of layers only")

    # -- activations -----------------------------------------------------------------

    def close_group(self, node) -> None:
        if self.state == "input":
            return
        if not self.group:
            prev = self.layers[-1][2].weight
            raise self.g.refuse(f"has the {_node(node)} directly after the layer of {prev}, with no "
                                "activation between; nnsweep reads an activation after every hidden layer")
        self.activations.append(self.recognise(self.group, self.cur, self.g.value(node.input[0])))
        self.cur, self.group, self.group_out = self.g.value(node.input[0]), [], set()

    def recognise(self, nodes, start: str, end: str) -> str:
        g = self.g
        if end not in self.group_out:
            raise g.refuse(f"has the {_node(nodes[0])} whose result the next layer does not take")
        names = ", ".join(_node(n) for n in nodes)
        if len(nodes) == 1:
            (node,), a = nodes, _attrs(nodes[0], self.onnx)
            if node.op_type == "LeakyRelu":
                return f"leaky_relu({_f32(a.get('alpha', 0.01))!r})"
            if node.op_type == "Gelu":
                approx = a.get("approximate", b"none")
                return "gelu_tanh" if (approx.decode() if isinstance(approx, bytes) else approx) == "tanh" else "gelu"
            single = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}
            if node.op_type in single:
                return single[node.op_type]
        values = self.evaluate(nodes, start, end)
        for name, f in CANDIDATES.items():
            ref = f(PROBE)
            if np.all(np.abs(values - ref) <= 1e-6 * (1 + np.abs(ref))):
                return name
        neg = values[PROBE < 0] / PROBE[PROBE < 0]
        pos_ok = np.allclose(values[PROBE > 0], PROBE[PROBE > 0], rtol=1e-6, atol=0)
        if pos_ok and np.allclose(neg, neg[0], rtol=1e-6, atol=0) and 0 < neg[0] < 1:
            return f"leaky_relu({_f32(neg[0])!r})"
        raise g.refuse(f"has the activation {names}, which computes none of the activations nnsweep supports "
                       "(ReLU, LeakyReLU, Tanh, Sigmoid, GELU in its erf and tanh forms, SiLU)")

    def evaluate(self, nodes, start: str, end: str) -> np.ndarray:
        env = {start: PROBE.copy()}
        with np.errstate(all="ignore"):
            for node in nodes:
                args = [env[self.g.value(i)] if self.g.value(i) in env else
                        np.float64(np.ravel(self.g.const[self.g.value(i)][0])[0]) for i in node.input if i]
                a = _attrs(node, self.onnx)
                if node.op_type == "LeakyRelu":
                    out = np.where(args[0] >= 0, args[0], _f32(a.get("alpha", 0.01)) * args[0])
                elif node.op_type == "Gelu":
                    approx = a.get("approximate", b"none")
                    kind = approx.decode() if isinstance(approx, bytes) else approx
                    out = CANDIDATES["gelu_tanh" if kind == "tanh" else "gelu"](args[0])
                else:
                    out = ELEMENTWISE[node.op_type](*args)
                env[node.output[0]] = np.asarray(out, dtype=np.float64)
        return env[end]

    def finish(self):
        g = self.g
        if not self.layers:
            raise g.refuse("has no linear layer (Gemm or MatMul with a constant weight)")
        if self.group:
            raise g.refuse(f"has the {_node(self.group[0])} after the last linear layer; {READOUT}")
        if g.value(g.output) != self.cur:
            raise g.refuse(f"has the output {g.output}, which is not the last linear layer's result")
        return assemble([tuple(layer) for layer in self.layers], tuple(self.activations), "onnx")


def _why(op: str) -> str:
    known = {"Conv": "a convolution", "ConvTranspose": "a convolution", "MaxPool": "pooling",
             "AveragePool": "pooling", "GlobalAveragePool": "pooling", "Attention": "attention",
             "LayerNormalization": "a LayerNorm", "Concat": "a concatenation", "Reshape": "a Reshape that "
             "changes the 2-D chain", "Flatten": "a Flatten that is not a no-op", "Transpose": "a transpose",
             "Shape": "shape arithmetic", "Gather": "indexing", "Cast": "a cast", "Split": "a split"}
    return f"{op} is {known.get(op, 'not part of an MLP')}"
