;; args.wat: prints its arguments (argv[1..], without the program name) separated by spaces,
;; then a newline. Exits 1 if a write fails, 2 if the arguments do not fit its buffers.
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  ;; 0..8: iovec; 8..12: bytes written; 16: argc; 20: argument bytes; 24: " "; 25: "\n";
  ;; 64 KiB..128 KiB: the argv pointers; 128 KiB..256 KiB: the argument strings.
  (memory (export "memory") 4)
  (data (i32.const 24) " \n")
  (global $argv i32 (i32.const 65536))
  (global $argv_capacity i32 (i32.const 65536))
  (global $strings i32 (i32.const 131072))
  (global $strings_capacity i32 (i32.const 131072))

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

  (func $strlen (param $ptr i32) (result i32)
    (local $end i32)
    (local.set $end (local.get $ptr))
    (block $nul
      (loop $scan
        (br_if $nul (i32.eqz (i32.load8_u (local.get $end))))
        (local.set $end (i32.add (local.get $end) (i32.const 1)))
        (br $scan)))
    (i32.sub (local.get $end) (local.get $ptr)))

  (func (export "_start")
    (local $argc i32)
    (local $i i32)
    (local $arg i32)
    (if (call $args_sizes_get (i32.const 16) (i32.const 20))
      (then (call $proc_exit (i32.const 2))))
    (local.set $argc (i32.load (i32.const 16)))
    (if (i32.or
          (i32.gt_u (local.get $argc) (i32.div_u (global.get $argv_capacity) (i32.const 4)))
          (i32.gt_u (i32.load (i32.const 20)) (global.get $strings_capacity)))
      (then (call $proc_exit (i32.const 2))))
    (if (call $args_get (global.get $argv) (global.get $strings))
      (then (call $proc_exit (i32.const 2))))
    ;; argv[0] is the program name ("job"); print the rest.
    (local.set $i (i32.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $argc)))
        (if (i32.gt_u (local.get $i) (i32.const 1))
          (then (call $write_all (i32.const 24) (i32.const 1))))
        (local.set $arg
          (i32.load (i32.add (global.get $argv) (i32.mul (local.get $i) (i32.const 4)))))
        (call $write_all (local.get $arg) (call $strlen (local.get $arg)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $write_all (i32.const 25) (i32.const 1))))
