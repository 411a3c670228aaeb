"""Training-step composition on top of the layer-cost core: backward, recompute, exposed
communication, ZeRO/FSDP, optimizer, memory per rank, and the stage costs the simulator runs."""
