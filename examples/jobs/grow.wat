;; grow.wat: grows its memory one 64 KiB page at a time until a growth fails, then traps.
;; Under a memory limit it ends as MemoryLimit; its usage reports the limit as peak memory.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      ;; memory.grow returns the old size in pages, or -1 when the host refuses.
      (br_if $more
        (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))
