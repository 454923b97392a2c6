;; echo.wat: copies stdin to stdout until end of input. Exits 1 if a read or write fails.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 0..8: iovec; 8..12: byte count; 4096..8192: the buffer.
  (global $buffer i32 (i32.const 4096))
  (global $buffer_len i32 (i32.const 4096))

  ;; Writes all of [ptr, ptr+len) to stdout: fd_write may write less than asked.
  (func $write_all (param $ptr i32) (param $len i32)
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (i32.const 8))))
        (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
        (br $again))))

  (func (export "_start")
    (local $read i32)
    (block $eof
      (loop $next
        (i32.store (i32.const 0) (global.get $buffer))
        (i32.store (i32.const 4) (global.get $buffer_len))
        (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (local.set $read (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $read)))
        (call $write_all (global.get $buffer) (local.get $read))
        (br $next)))))
