# A second, CPU-only build of the same addon with node-gyp (`npx node-gyp rebuild`), for environments that
# prefer node-gyp. The build of record is CMakeLists.txt via cmake-js (`npm run build:native`), which also
# compiles the CUDA backend when a toolkit is present. Both write build/Release/webgrpo.node.
# Offline use needs Node's headers locally: `--nodedir=/usr` (Debian's nodejs-dev puts them in /usr/include/node)
# or npm's `nodedir` config.
{
  "targets": [
    {
      "target_name": "webgrpo",
      "sources": [
        "<!@(node -e \"const fs=require('fs');for(const d of ['native/src','native/src/cpu','native/src/binding'])for(const f of fs.readdirSync(d).sort())if(f.endsWith('.cpp'))console.log(d+'/'+f)\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/src"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++14", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-O3", "-march=x86-64-v2", "-ffp-contract=off", "-fopenmp", "-fexceptions"],
      "ldflags": ["-fopenmp"]
    }
  ]
}
