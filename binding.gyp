{
  "variables": {
    # The Xen platform is built only where Xen's development files are
    # (Debian's libxen-dev); everywhere else the embedded platform runs alone.
    "have_xen%": "<!(test -f /usr/include/xengnttab.h -a -f /usr/include/xenevtchn.h && echo 1 || echo 0)",
    # The block backend's io_uring is built only where liburing's development
    # files are (Debian's liburing-dev); elsewhere it does its I/O on its pool.
    "have_liburing%": "<!(test -f /usr/include/liburing.h && echo 1 || echo 0)"
  },
  "target_defaults": {
    "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")"],
    # A ring thread or an I/O worker may be terminated (a driver domain
    # destroyed, a worker that will not stop) while one of its addon calls
    # is making an error: without this, node-addon-api aborts the whole
    # process ("FATAL ERROR: Error::Error napi_define_properties") rather
    # than drop an error nobody can receive (node-addon-api's setup.md).
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions"],
    "cflags_cc": ["-std=c++17"]
  },
  "targets": [
    {
      "target_name": "xenmesh_native",
      "sources": ["native/xenmesh_native.cc"]
    },
    {
      "target_name": "xenmesh_xen",
      "conditions": [
        ["have_xen==1", {
          "sources": ["native/xen/xenmesh_xen.cc"],
          "libraries": ["-lxengnttab", "-lxenevtchn"]
        }, {
          "type": "none"
        }]
      ]
    },
    {
      # xenstored's view of a real Xen host (domain states through
      # libxenctrl, dom0's local ring): only the domain running xenstored
      # loads it, so a driver domain's backend does not need libxenctrl.
      "target_name": "xenmesh_xenctrl",
      "conditions": [
        ["have_xen==1", {
          "sources": ["native/xen/xenctrl.cc"],
          "libraries": ["-lxenctrl"]
        }, {
          "type": "none"
        }]
      ]
    },
    {
      "target_name": "xenmesh_uring",
      "conditions": [
        ["have_liburing==1", {
          "sources": ["native/uring/uring.cc"],
          "libraries": ["-luring"]
        }, {
          "type": "none"
        }]
      ]
    }
  ]
}
