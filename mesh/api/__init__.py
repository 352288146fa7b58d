"""The gRPC services of the fabric: `mmesh.ModelMesh` (model_mesh), `meshserve.admin.MeshAdmin`
(mesh_admin), and the one table that maps mesh errors to gRPC status codes.
"""
