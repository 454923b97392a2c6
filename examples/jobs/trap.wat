;; trap.wat: executes `unreachable`, which traps.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    unreachable))
