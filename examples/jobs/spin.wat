;; spin.wat: loops forever. It ends only when its fuel runs out (FuelExhausted) or its wall time
;; does (Timeout).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever
      (br $forever))))
