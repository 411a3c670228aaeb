"""Pipeline schedules as data: per-rank action lists, generators, a verifier.

| name             | paper                                            | bubble (F=B, or F=I=W)      | peak in flight (rank 0) |
|------------------|--------------------------------------------------|-----------------------------|-------------------------|
TODO
"""
