"""The training room: corpus rendering, batches, losses, training, distillation, fitting and evaluation.

Nothing here is on the serving path: the service imports only the modules at the top of `models/`
(audio, CQT, pitch networks, front end, embedding heads, artifact, config).
"""
