"""Compile a flow's logical graph into stages of fused operators.

A stage is what one worker thread runs: a chain of operators with one input channel and a list
of output channels. Consecutive stateless steps fuse into one stage when nothing else reads the
intermediate stream; expression steps then fuse into one lazy polars query and per-record steps
into one Python loop. Sources and sinks get stages of their own so I/O overlaps with compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..flow import Flow, Node
from ..ops.base import Operator
from ..ops.stateless import (
    BranchMask,
    BranchSelect,
    ExprChain,
    ExprStep,
    MapBatches,
    RecordChain,
    RecordStep,
)

FUSABLE = {"expr", "record", "map_batches", "branch", "branch_side", "op"}
CARRIES_CHAIN = FUSABLE | {"union"}


def main_consumers(node: Node) -> list[Node]:
    """Consumers of a node's main output (side outputs such as ``.late()`` excluded)."""
    return [c for c in node.consumers if c.kind != "side"]


@dataclass(eq=False)
class Stage:
    """One unit of execution: the nodes it runs, in order, and the stages it feeds."""

    nodes: list[Node]
    producers: list[Stage] = field(default_factory=list)
    consumers: list[Stage] = field(default_factory=list)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def tail(self) -> Node:
        return self.nodes[-1]

    @property
    def name(self) -> str:
        return self.head.name

    def operators(self) -> list[Operator]:
        """Build the operators of this stage, fusing runs of expression or record steps."""
        ops: list[Operator] = []
        expr_run: list[ExprStep] = []
        record_run: list[RecordStep] = []

        def close_runs() -> None:
            if expr_run:
                ops.append(ExprChain(list(expr_run)))
                expr_run.clear()
            if record_run:
                ops.append(RecordChain(list(record_run)))
                record_run.clear()

        for node in self.nodes:
            p = node.params
            if node.kind == "expr":
                if record_run:
                    close_runs()
                expr_run.append(ExprStep(node.name, p["kind"], p["exprs"], p["named"], node.on_error))
            elif node.kind == "record":
                if expr_run:
                    close_runs()
                record_run.append(RecordStep(node.name, p["kind"], p["fn"], node.on_error))
            else:
                close_runs()
                if node.kind == "map_batches":
                    ops.append(
                        MapBatches(
                            node.name, p["fn"], node.on_error, p["format"], p.get("same_rows"), p.get("stateful", False)
                        )
                    )
                elif node.kind == "branch":
                    ops.append(BranchMask(node.name, p["predicate"], node.on_error))
                elif node.kind == "branch_side":
                    ops.append(BranchSelect(node.name, p["branch"], p["side"]))
                elif node.kind == "op":
                    ops.append(p["factory"]())
        close_runs()
        return ops


def compile_stages(flow: Flow) -> list[Stage]:
    """Group the flow's nodes into stages and connect them (in definition order)."""
    stage_of: dict[int, Stage] = {}
    stages: list[Stage] = []
    for node in flow.nodes.values():
        parent = node.inputs[0] if len(node.inputs) == 1 else None
        fuse = (
            node.kind in FUSABLE
            and parent is not None
            and parent.kind in CARRIES_CHAIN
            and len(main_consumers(parent)) == 1
        )
        if fuse:
            assert parent is not None
            stage = stage_of[id(parent)]
            stage.nodes.append(node)
        else:
            stage = Stage([node])
            stages.append(stage)
            for parent_node in node.inputs:
                upstream = stage_of[id(parent_node)]
                stage.producers.append(upstream)
        stage_of[id(node)] = stage
    for stage in stages:
        for upstream in stage.producers:
            upstream.consumers.append(stage)
    return stages
